# The default authorization policy of agentvault. Deny by default: a request is
# allowed only when a ground for its action holds, and a denial always says why.
#
# Every resource named in the input belongs to the caller's tenant (the vault
# names keys within the tenant of its SVID), so no rule here crosses tenants.
#
# Shaped for speed as well as clarity, since it runs on every request: the
# decision dispatches on the action, an allowed request stops at the first
# ground that holds (tried most common first), only a denied one gathers every
# reason, and rules read input fields directly rather than through helper
# rules, each reference to a rule being an evaluation step of its own.
# Negations go through helper rules (such as new_path_action), on which OPA
# and regorus agree even when the input lacks a field.
package agentvault.authz

import rego.v1

# An allowed request gives the first ground that holds as its reason; a
# denied one every reason it was denied for.
decision := {"allow": true, "reasons": [secret_ground]} if {
	secret_action
	is_string(secret_ground)
} else := {"allow": false, "reasons": sort(secret_denials)} if {
	secret_action
} else := {"allow": true, "reasons": sort(approve_grounds)} if {
	input.action == "approve"
	count(approve_grounds) > 0
} else := {"allow": false, "reasons": ["role may not approve"]} if {
	input.action == "approve"
} else := {"allow": true, "reasons": [audit_ground]} if {
	input.action == "audit"
	is_string(audit_ground)
} else := {"allow": false, "reasons": [audit_denial]} if {
	input.action == "audit"
} else := {"allow": false, "reasons": [sprintf("no rule allows %s", [input.action])]} if {
	is_string(input.action)
} else := {"allow": false, "reasons": ["no rule allows this request"]}

# ---- matching -------------------------------------------------------------

# A pattern is an exact path or "prefix/*", which covers every path under prefix/.
covers(pattern, path) if pattern == path

covers(pattern, path) if {
	endswith(pattern, "/*")
	startswith(path, trim_suffix(pattern, "*"))
}

tier_rank := {"standard": 0, "sensitive": 1, "critical": 2}

# ---- secrets: read, write, delete, list, rotate, grant, token, import -----

# For list, the vault asks once for the listed prefix (a missing resource) and
# once per item, leaving out the items the caller may not list.
secret_action if input.action in {"read", "write", "delete", "list", "rotate", "grant", "token", "import"}

# The grounds, in the order they are tried:
#
# Rule 1 (and 7 for token and import): a secret belongs to the agent that first
# wrote it; an unscoped one to every caller of that agent, a scoped one to
# that role. The agent-level caller provisions for its roles: it may replace
# or remove a role-scoped secret, never read it or hand it on.
#
# Rule 3: a bearer token lets its bearer do exactly what its scope says
# (read, write or list), with the authority of the agent and role that minted
# it and up to the tier it was issued (or approved) for.
#
# Rule 2: a grant lets another agent of the tenant read (and list), never
# more, and reaches a role-scoped secret only when that role made it.
#
# A path that holds no secret yet: the writer becomes its owner, and a read is
# let through so that the vault can answer 404. Grants and tokens may name
# paths and prefixes that hold nothing yet, because they only ever reach
# secrets of the agent and role that made them.
secret_ground := "caller's agent owns this secret" if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	input.resource.owner_scope == null
} else := sprintf("caller's role %s owns this secret", [input.subject.role]) if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	input.subject.role == input.resource.owner_scope
} else := sprintf("token scope secrets:%s:%s covers this path", [input.token.action, input.token.pattern]) if {
	input.token.action == input.action
	covers(input.token.pattern, input.resource.path)
	token_reaches
} else := sprintf("grant of %s covers this path", [min(covering_grants)]) if {
	grant_action
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
	count(covering_grants) > 0
} else := new_path_reasons[input.action] if {
	input.resource.exists == false
} else := "the agent-level caller provisions its roles' secrets" if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	input.subject.role == null
	provisioning_action
}

provisioning_action if input.action in {"write", "delete", "rotate", "import"}

new_path_reasons := {
	"read": "no secret at this path yet; the writer becomes its owner",
	"write": "no secret at this path yet; the writer becomes its owner",
	"rotate": "no secret at this path yet; the writer becomes its owner",
	"import": "no secret at this path yet; the writer becomes its owner",
	"list": "any caller of the tenant may list",
	"grant": "grants and tokens reach only their maker's own secrets",
	"token": "grants and tokens reach only their maker's own secrets",
}

new_path_action if new_path_reasons[input.action]

grant_action if input.action in {"read", "list"}

grant_reaches(grant) if input.resource.owner_scope == null

grant_reaches(grant) if grant.role == input.resource.owner_scope

# The paths of the grants to the caller's agent that cover the resource.
covering_grants := [grant.path |
	some grant in input.grants
	grant.agent_id == input.subject.agent_id
	covers(grant.path, input.resource.path)
	grant_reaches(grant)
]

token_reaches if input.resource.exists == false

token_reaches if {
	input.resource.owner == input.token.agent_id
	token_scope_allows
	tier_rank[input.resource.tier] <= tier_rank[input.token.tier]
}

token_scope_allows if input.resource.owner_scope == null

token_scope_allows if input.resource.owner_scope == input.token.role

token_covers if covers(input.token.pattern, input.resource.path)

# ---- denials: every reason a secret action was refused --------------------

owner_scope_allows if input.resource.owner_scope == null

owner_scope_allows if input.subject.role == input.resource.owner_scope

owner_scope_allows if {
	input.subject.role == null
	provisioning_action
}

secret_denials contains sprintf("secret is scoped to role %s", [input.resource.owner_scope]) if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	not owner_scope_allows
}

secret_denials contains "not the owner of this secret" if {
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
}

secret_denials contains sprintf("no secret at this path to %s", [input.action]) if {
	input.resource.exists == false
	not new_path_action
}

secret_denials contains "no grant covers this path" if {
	grant_action
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
	count(covering_grants) == 0
}

secret_denials contains sprintf("token scope allows %s, not %s", [input.token.action, input.action]) if {
	input.token.action != input.action
}

secret_denials contains "token scope does not cover this path" if {
	input.token.action == input.action
	not token_covers
}

secret_denials contains sprintf("token minted for %s secrets of its maker does not reach this one", [input.token.tier]) if {
	input.token.action == input.action
	token_covers
	not token_reaches
}

# ---- rule 5: approve ------------------------------------------------------

approve_grounds contains sprintf("role %s may approve", [input.subject.role]) if {
	input.subject.role in data.agentvault.config.approver_roles
}

# ---- rule 6: audit --------------------------------------------------------

# The audit log is scoped like the secrets it is about. The vault asks once
# without an event (does the caller see the whole tenant?) and, when not,
# once per event, with input.event (its caller, kind and action) and, as
# input.resource, the secret the event is about as it is now (a missing
# resource for events about no secret, or about one deleted since).
#
# An auditor role sees the tenant; any other caller its own events and the
# events about secrets it may read (rules 1, 2 and 3 for read), so the audit
# log never names a path that `ls` hides from it.
audit_ground := sprintf("role %s audits the tenant", [input.subject.role]) if {
	input.subject.role in data.agentvault.config.auditor_roles
} else := "the caller's own event" if {
	input.event.caller == input.subject.spiffe_id
} else := "an event about a secret the caller may read" if {
	audit_event
	may_read
}

audit_denial := "only an auditor role sees the whole tenant's audit" if {
	not audit_event
}

audit_denial := "an event of another caller about a secret the caller may not read" if audit_event

audit_event if is_object(input.event)

# Whether the caller may read input.resource: rule 1 (its agent's unscoped
# secrets, its role's scoped ones), rule 3 (a read token covering it), rule 2
# (a grant of the secret's owner).
may_read if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	owner_scope_allows_read
}

may_read if {
	input.token.action == "read"
	input.resource.exists == true
	covers(input.token.pattern, input.resource.path)
	token_reaches
}

may_read if {
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
	count(covering_grants) > 0
}

owner_scope_allows_read if input.resource.owner_scope == null

owner_scope_allows_read if input.subject.role == input.resource.owner_scope
