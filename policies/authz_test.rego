# Unit tests of authz.rego. Run with `opa test policies/`, or through regorus by
# `cargo test --lib policy` (which fails if any test_ rule here fails or none ran).
package agentvault.authz_test

import rego.v1

import data.agentvault.authz

cfg := {"approver_roles": ["approver"], "auditor_roles": ["auditor"]}

me := "spiffe://example.org/agent/acme/bot"

other := "spiffe://example.org/agent/acme/other-bot"

subject(role) := {
	"spiffe_id": me,
	"tenant": "acme",
	"agent": "bot",
	"agent_id": me,
	"role": role,
	"uid": 1001,
	"pid": 42,
}

secret(path, owner, scope) := {
	"path": path,
	"exists": true,
	"owner": owner,
	"owner_scope": scope,
	"tier": "sensitive",
	"type": "api_key",
	"tags": {},
}

missing(path) := {
	"path": path,
	"exists": false,
	"owner": null,
	"owner_scope": null,
	"tier": null,
	"type": null,
	"tags": {},
}

req(role, action, resource) := {
	"subject": subject(role),
	"action": action,
	"resource": resource,
	"grants": [],
	"token": null,
}

with_grants(r, grants) := object.union(r, {"grants": grants})

token_of(r, action, pattern, agent, role, tier) := object.union(r, {"token": {
	"action": action,
	"pattern": pattern,
	"agent_id": agent,
	"role": role,
	"tier": tier,
}})

# A token minted by the other agent's agent-level caller, reaching every tier.
with_token(r, action, pattern) := token_of(r, action, pattern, other, null, "critical")

decide(r) := d if {
	d := authz.decision with input as r with data.agentvault.config as cfg
}

decide_cfg(r, c) := d if {
	d := authz.decision with input as r with data.agentvault.config as c
}

allowed(r) if decide(r).allow == true

denied_for(r, reasons) if {
	d := decide(r)
	d.allow == false
	d.reasons == reasons
}

owner_actions := ["read", "write", "delete", "list", "rotate", "grant", "token", "import"]

# ---- rule 1: owner scope ----------------------------------------------------

test_owner_agent_level_may_do_everything_to_unscoped if {
	every a in owner_actions {
		allowed(req(null, a, secret("prod/openai", me, null)))
	}
}

test_owner_any_role_may_do_everything_to_unscoped if {
	every a in owner_actions {
		allowed(req("writer", a, secret("prod/openai", me, null)))
	}
}

test_owner_allowed_reason if {
	decide(req(null, "read", secret("prod/openai", me, null))) == {
		"allow": true,
		"reasons": ["caller's agent owns this secret"],
	}
}

test_scoped_secret_allows_its_role if {
	every a in owner_actions {
		allowed(req("researcher", a, secret("prod/openai", me, "researcher")))
	}
	decide(req("researcher", "read", secret("prod/openai", me, "researcher"))).reasons == ["caller's role researcher owns this secret"]
}

test_scoped_secret_denies_other_role if {
	every a in owner_actions {
		denied_for(req("writer", a, secret("prod/openai", me, "researcher")), ["secret is scoped to role researcher"])
	}
}

test_scoped_secret_is_not_the_agent_level_callers_to_read_or_hand_on if {
	every a in ["read", "list", "grant", "token"] {
		denied_for(req(null, a, secret("prod/openai", me, "researcher")), ["secret is scoped to role researcher"])
	}
}

test_agent_level_caller_provisions_scoped_secrets if {
	every a in ["write", "delete", "rotate", "import"] {
		decide(req(null, a, secret("prod/openai", me, "researcher"))) == {
			"allow": true,
			"reasons": ["the agent-level caller provisions its roles' secrets"],
		}
	}
}

test_new_path_write_import_rotate_read_allowed if {
	every a in ["write", "import", "rotate", "read"] {
		decide(req("writer", a, missing("new/key"))) == {
			"allow": true,
			"reasons": ["no secret at this path yet; the writer becomes its owner"],
		}
	}
	allowed(req(null, "write", missing("new/key")))
}

test_new_path_delete_denied if {
	denied_for(req(null, "delete", missing("new/key")), ["no secret at this path to delete"])
}

test_grants_and_tokens_may_name_paths_that_hold_nothing_yet if {
	every a in ["grant", "token"] {
		decide(req("writer", a, missing("shared/*"))) == {
			"allow": true,
			"reasons": ["grants and tokens reach only their maker's own secrets"],
		}
	}
}

test_other_agent_may_not_write_delete_rotate_grant_token if {
	every a in ["write", "delete", "rotate", "grant", "token", "import"] {
		denied_for(req(null, a, secret("prod/openai", other, null)), ["not the owner of this secret"])
	}
}

test_other_agent_may_not_read_without_grant if {
	denied_for(req(null, "read", secret("prod/openai", other, null)), ["no grant covers this path", "not the owner of this secret"])
}

# ---- rule 2: grants ---------------------------------------------------------

test_exact_grant_allows_read if {
	r := with_grants(req(null, "read", secret("prod/openai", other, null)), [{"agent_id": me, "path": "prod/openai"}])
	decide(r) == {"allow": true, "reasons": ["grant of prod/openai covers this path"]}
}

test_prefix_grant_allows_read if {
	r := with_grants(req("writer", "read", secret("prod/openai/key", other, null)), [{"agent_id": me, "path": "prod/*"}])
	decide(r) == {"allow": true, "reasons": ["grant of prod/* covers this path"]}
}

test_prefix_grant_needs_a_whole_segment if {
	r := with_grants(req(null, "read", secret("production/key", other, null)), [{"agent_id": me, "path": "prod/*"}])
	denied_for(r, ["no grant covers this path", "not the owner of this secret"])
}

test_prefix_grant_does_not_cover_the_prefix_itself if {
	r := with_grants(req(null, "read", secret("prod", other, null)), [{"agent_id": me, "path": "prod/*"}])
	not allowed(r)
}

test_exact_grant_does_not_cover_children if {
	r := with_grants(req(null, "read", secret("prod/openai/key", other, null)), [{"agent_id": me, "path": "prod/openai"}])
	not allowed(r)
}

test_grant_to_another_agent_does_not_help if {
	r := with_grants(req(null, "read", secret("prod/openai", other, null)), [{"agent_id": "spiffe://example.org/agent/acme/third", "path": "prod/openai"}])
	denied_for(r, ["no grant covers this path", "not the owner of this secret"])
}

test_grants_never_allow_write_or_delete if {
	every a in ["write", "delete", "rotate", "grant", "token"] {
		r := with_grants(req(null, a, secret("prod/openai", other, null)), [{"agent_id": me, "path": "prod/*"}])
		denied_for(r, ["not the owner of this secret"])
	}
}

test_grant_lists_what_it_covers if {
	r := with_grants(req(null, "list", secret("prod/openai", other, null)), [{"agent_id": me, "path": "prod/*"}])
	decide(r) == {"allow": true, "reasons": ["grant of prod/* covers this path"]}
}

test_grant_reaches_a_scoped_secret_only_when_that_role_made_it if {
	s := secret("prod/openai", other, "researcher")
	not allowed(with_grants(req(null, "read", s), [{"agent_id": me, "path": "prod/*", "role": null}]))
	not allowed(with_grants(req(null, "read", s), [{"agent_id": me, "path": "prod/*", "role": "writer"}]))
	allowed(with_grants(req(null, "read", s), [{"agent_id": me, "path": "prod/*", "role": "researcher"}]))
}

test_grant_does_not_bypass_own_role_scope if {
	r := with_grants(req("writer", "read", secret("prod/openai", me, "researcher")), [{"agent_id": me, "path": "prod/*"}])
	denied_for(r, ["secret is scoped to role researcher"])
}

# ---- rule 3: bearer tokens --------------------------------------------------

test_read_token_exact_allows_read_of_other_agents_secret if {
	r := with_token(req(null, "read", secret("prod/openai", other, null)), "read", "prod/openai")
	decide(r) == {"allow": true, "reasons": ["token scope secrets:read:prod/openai covers this path"]}
}

test_read_token_prefix_allows_read if {
	r := with_token(req("writer", "read", secret("prod/openai/key", other, null)), "read", "prod/*")
	allowed(r)
}

test_write_token_allows_write_regardless_of_owner if {
	allowed(with_token(req(null, "write", secret("prod/openai", other, null)), "write", "prod/*"))
	allowed(token_of(req("writer", "write", secret("prod/openai", me, "researcher")), "write", "prod/openai", me, "researcher", "critical"))
}

test_token_action_mismatch_denies if {
	r := with_token(req(null, "write", secret("prod/openai", other, null)), "read", "prod/*")
	denied_for(r, ["not the owner of this secret", "token scope allows read, not write"])
}

test_token_never_allows_delete if {
	r := with_token(req(null, "delete", secret("prod/openai", other, null)), "write", "prod/*")
	denied_for(r, ["not the owner of this secret", "token scope allows write, not delete"])
}

test_token_path_mismatch_denies if {
	r := with_token(req(null, "read", secret("staging/openai", other, null)), "read", "prod/*")
	denied_for(r, ["no grant covers this path", "not the owner of this secret", "token scope does not cover this path"])
}

test_list_token_lists_the_items_it_covers if {
	r := with_token(req(null, "list", secret("prod/openai", other, null)), "list", "prod/*")
	decide(r) == {"allow": true, "reasons": ["token scope secrets:list:prod/* covers this path"]}
	not allowed(with_token(req(null, "list", secret("staging/openai", other, null)), "list", "prod/*"))
}

test_token_reaches_only_its_makers_secrets if {
	r := token_of(req(null, "read", secret("prod/openai", other, null)), "read", "prod/*", "spiffe://example.org/agent/acme/third", null, "critical")
	denied_for(r, [
		"no grant covers this path",
		"not the owner of this secret",
		"token minted for critical secrets of its maker does not reach this one",
	])
}

test_token_reaches_only_up_to_its_tier if {
	s := secret("prod/openai", other, null)
	allowed(token_of(req(null, "read", s), "read", "prod/*", other, null, "sensitive"))
	not allowed(token_of(req(null, "read", s), "read", "prod/*", other, null, "standard"))
	allowed(token_of(req(null, "read", object.union(s, {"tier": "critical"})), "read", "prod/*", other, null, "critical"))
	not allowed(token_of(req(null, "read", object.union(s, {"tier": "critical"})), "read", "prod/*", other, null, "sensitive"))
}

test_token_reaches_a_scoped_secret_only_when_that_role_minted_it if {
	s := secret("prod/openai", other, "researcher")
	not allowed(token_of(req(null, "read", s), "read", "prod/*", other, null, "critical"))
	allowed(token_of(req(null, "read", s), "read", "prod/*", other, "researcher", "critical"))
}

# ---- rule 4: listing (the prefix, then each item as for read) --------------------------------------------------------

test_any_caller_may_list if {
	every role in [null, "writer"] {
		decide(req(role, "list", missing("prod"))) == {"allow": true, "reasons": ["any caller of the tenant may list"]}
	}
	allowed(req(null, "list", secret("prod/a", me, null)))
	denied_for(req(null, "list", secret("prod/a", other, null)), ["no grant covers this path", "not the owner of this secret"])
}

# ---- rule 5: approvals ------------------------------------------------------

test_approver_may_approve if {
	decide(req("approver", "approve", missing("approvals"))) == {"allow": true, "reasons": ["role approver may approve"]}
}

test_others_may_not_approve if {
	denied_for(req("writer", "approve", missing("approvals")), ["role may not approve"])
	denied_for(req(null, "approve", missing("approvals")), ["role may not approve"])
}

test_approver_roles_come_from_config if {
	c := {"approver_roles": ["lead"], "auditor_roles": []}
	decide_cfg(req("lead", "approve", missing("approvals")), c).allow == true
	decide_cfg(req("approver", "approve", missing("approvals")), c).allow == false
}

# ---- rule 6: audit ----------------------------------------------------------

# Whether the caller sees the whole tenant: only an auditor role does.
test_only_auditors_see_the_whole_tenant if {
	decide(req("auditor", "audit", missing("audit"))) == {"allow": true, "reasons": ["role auditor audits the tenant"]}
	denied_for(req(null, "audit", missing("audit")), ["only an auditor role sees the whole tenant's audit"])
	denied_for(req("writer", "audit", missing("audit")), ["only an auditor role sees the whole tenant's audit"])
}

test_auditor_roles_come_from_config if {
	c := {"approver_roles": [], "auditor_roles": ["sec"]}
	decide_cfg(req("sec", "audit", missing("audit")), c).allow == true
	decide_cfg(req("auditor", "audit", missing("audit")), c).allow == false
}

# An audit event as the vault asks about it: who acted, and the secret it is about.
event_of(r, caller) := object.union(r, {"event": {"caller": caller, "kind": "vault.accessed", "action": "read"}})

test_a_caller_sees_its_own_events if {
	r := event_of(req("writer", "audit", secret("prod/x", other, null)), me)
	decide(r) == {"allow": true, "reasons": ["the caller's own event"]}
}

test_a_caller_sees_events_about_secrets_it_may_read if {
	decide(event_of(req(null, "audit", secret("prod/x", me, null)), other)) == {"allow": true, "reasons": ["an event about a secret the caller may read"]}
	decide(event_of(req("writer", "audit", secret("prod/x", me, "writer")), other)).allow == true
	g := with_grants(req(null, "audit", secret("prod/x", other, null)), [{"agent_id": me, "path": "prod/*", "role": null}])
	decide(event_of(g, other)).allow == true
}

test_a_caller_does_not_see_others_events_about_what_it_may_not_read if {
	reason := ["an event of another caller about a secret the caller may not read"]
	denied_for(event_of(req(null, "audit", secret("prod/x", other, null)), other), reason)
	denied_for(event_of(req(null, "audit", secret("prod/x", me, "writer")), sprintf("%s/writer", [me])), reason)
	denied_for(event_of(req("reader", "audit", secret("prod/x", me, "writer")), other), reason)
	denied_for(event_of(req(null, "audit", missing("prod/gone")), other), reason)
}

test_a_read_token_shows_events_about_what_it_covers if {
	r := event_of(req("writer", "audit", secret("prod/x", other, null)), other)
	decide(with_token(r, "read", "prod/*")).allow == true
	denied_for(with_token(r, "write", "prod/*"), ["an event of another caller about a secret the caller may not read"])
}

test_the_auditor_sees_every_event if {
	decide(event_of(req("auditor", "audit", secret("prod/x", other, "ops")), other)).allow == true
}

# ---- default deny -----------------------------------------------------------

test_unknown_action_is_denied if {
	denied_for(req(null, "frobnicate", secret("prod/openai", me, null)), ["no rule allows frobnicate"])
}

test_empty_input_is_denied if {
	decide({}) == {"allow": false, "reasons": ["no rule allows this request"]}
}

test_missing_config_denies_approve if {
	d := authz.decision with input as req("approver", "approve", missing("approvals"))
		with data.agentvault.config as {}
	d == {"allow": false, "reasons": ["role may not approve"]}
}

test_write_token_allows_a_new_path if {
	r := with_token(req(null, "write", missing("prod/new")), "write", "prod/*")
	decide(r).allow == true
	"token scope secrets:write:prod/* covers this path" in decide(r).reasons
}

test_token_does_not_help_approve_or_audit if {
	denied_for(with_token(req("writer", "approve", missing("approvals")), "read", "approvals"), ["role may not approve"])
	denied_for(with_token(req("writer", "audit", missing("audit")), "read", "audit"), ["only an auditor role sees the whole tenant's audit"])
}
