# The default authorization policy of agentvault. Deny by default: a request is
# allowed only when a ground for its action holds, and a denial always says why.
#
# Every resource named in the input belongs to the caller's tenant (the vault
# names keys within the tenant of its SVID), so no rule here crosses tenants.
#
# Shaped for speed as well as clarity, since it runs on every request: the
# decision dispatches on the action, so only that action's grounds are
# evaluated, and rules read input fields directly rather than through helper
# rules, each reference to a rule being an evaluation step of its own.
# Negations go through helper rules (such as new_path_action), on which OPA
# and regorus agree even when the input lacks a field.
package agentvault.authz

import rego.v1

# When any ground for the action holds, the request is allowed and the grounds
# are its reasons; otherwise the denials are.
decision := {"allow": true, "reasons": sort(secret_grounds)} if {
	secret_action
	count(secret_grounds) > 0
} else := {"allow": false, "reasons": sort(secret_denials)} if {
	secret_action
} else := {"allow": true, "reasons": sort(list_grounds)} if {
	input.action == "list"
} else := {"allow": true, "reasons": sort(approve_grounds)} if {
	input.action == "approve"
	count(approve_grounds) > 0
} else := {"allow": false, "reasons": ["role may not approve"]} if {
	input.action == "approve"
} else := {"allow": true, "reasons": sort(audit_grounds)} if {
	input.action == "audit"
	count(audit_grounds) > 0
} else := {"allow": false, "reasons": ["only the agent or an auditor may read audit"]} if {
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

# For list, the listed prefix must lie within the pattern's prefix.
covers_listing(pattern, prefix) if pattern == prefix

covers_listing(pattern, prefix) if {
	endswith(pattern, "/*")
	prefix == trim_suffix(pattern, "/*")
}

covers_listing(pattern, prefix) if {
	endswith(pattern, "/*")
	startswith(prefix, trim_suffix(pattern, "*"))
}

# ---- secrets: read, write, delete, rotate, grant, token, import -----------

secret_action if input.action in {"read", "write", "delete", "rotate", "grant", "token", "import"}

# Rule 1 (and 7 for token and import): a secret belongs to the agent that first
# wrote it; an unscoped one to every caller of that agent, a scoped one to
# that role only (not to the agent-level caller).
secret_grounds contains "caller's agent owns this secret" if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	input.resource.owner_scope == null
}

secret_grounds contains sprintf("caller's role %s owns this secret", [input.subject.role]) if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	input.resource.owner_scope != null
	input.subject.role == input.resource.owner_scope
}

secret_denials contains "not the owner of this secret" if {
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
}

owner_scope_matches if input.resource.owner_scope == null

owner_scope_matches if input.subject.role == input.resource.owner_scope

secret_denials contains sprintf("secret is scoped to role %s", [input.resource.owner_scope]) if {
	input.resource.exists == true
	input.resource.owner == input.subject.agent_id
	not owner_scope_matches
}

# A path that holds no secret yet: the writer becomes its owner, and a read is
# let through so that the vault can answer 404. Nothing else applies to it.
new_path_action if input.action in {"read", "write", "rotate", "import"}

secret_grounds contains "no secret at this path yet; the writer becomes its owner" if {
	input.resource.exists == false
	new_path_action
}

secret_denials contains sprintf("no secret at this path to %s", [input.action]) if {
	input.resource.exists == false
	not new_path_action
}

# Rule 2: a grant lets another agent of the tenant read, never more.
secret_grounds contains sprintf("grant of %s covers this path", [grant.path]) if {
	input.action == "read"
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
	some grant in input.grants
	grant.agent_id == input.subject.agent_id
	covers(grant.path, input.resource.path)
}

grant_covers if {
	some grant in input.grants
	grant.agent_id == input.subject.agent_id
	covers(grant.path, input.resource.path)
}

secret_denials contains "no grant covers this path" if {
	input.action == "read"
	input.resource.exists == true
	input.resource.owner != input.subject.agent_id
	not grant_covers
}

# Rule 3: a bearer token lets its bearer do exactly what its scope says
# (read, write or list), whoever owns the secret.
token_ground := sprintf("token scope secrets:%s:%s covers this path", [input.token.action, input.token.pattern])

secret_grounds contains token_ground if {
	input.token.action == input.action
	covers(input.token.pattern, input.resource.path)
}

token_covers if covers(input.token.pattern, input.resource.path)

secret_denials contains sprintf("token scope allows %s, not %s", [input.token.action, input.action]) if {
	input.token.action != input.action
}

secret_denials contains "token scope does not cover this path" if {
	input.token.action == input.action
	not token_covers
}

# ---- rule 4: list ---------------------------------------------------------

# Any caller of the tenant may list; the vault filters the items by read decisions.
list_grounds contains "any caller of the tenant may list"

list_grounds contains token_ground if {
	input.token.action == "list"
	covers_listing(input.token.pattern, input.resource.path)
}

# ---- rule 5: approve ------------------------------------------------------

approve_grounds contains sprintf("role %s may approve", [input.subject.role]) if {
	input.subject.role in data.agentvault.config.approver_roles
}

# ---- rule 6: audit --------------------------------------------------------

audit_grounds contains "the agent-level identity may read audit" if input.subject.role == null

audit_grounds contains sprintf("role %s may read audit", [input.subject.role]) if {
	input.subject.role in data.agentvault.config.auditor_roles
}
