# Unit tests of envoy.rego. Run with `opa test policies/`, or through regorus by
# `cargo test --lib policy`.
package envoy.authz_test

import rego.v1

import data.envoy.authz

routes := {"api.openai.com": {
	"roles": ["researcher"],
	"methods": ["POST"],
	"path_prefixes": ["/v1/"],
	"inject": {"authorization": {"secret": "envoy/openai/api-key", "prefix": "Bearer "}},
}}

request(host, method, path, role) := {
	"attributes": {"request": {"http": {"host": host, "method": method, "path": path}}},
	"agentvault": {"subject": {"spiffe_id": "spiffe://td/agent/acme/bot", "tenant": "acme", "agent": "bot", "role": role}},
}

test_nothing_is_allowed_without_routes if {
	authz.allow == {"allowed": false, "http_status": 403, "body": "no route for host api.openai.com"} with input as request("api.openai.com", "POST", "/v1/chat", "researcher")
}

test_a_route_allows_its_role_and_injects if {
	authz.allow == {
		"allowed": true,
		"agentvault_inject": {"authorization": {"secret": "envoy/openai/api-key", "prefix": "Bearer "}},
	} with input as request("api.openai.com:443", "POST", "/v1/chat", "researcher")
		with authz.routes as routes
}

decision(host, method, path, role) := d if {
	d := authz.allow with input as request(host, method, path, role) with authz.routes as routes
}

test_other_roles_methods_and_paths_are_denied if {
	decision("api.openai.com", "POST", "/v1/chat", "writer").body == "role writer may not call api.openai.com"
	decision("api.openai.com", "POST", "/v1/chat", null).body == "role null may not call api.openai.com"
	decision("api.openai.com", "DELETE", "/v1/chat", "researcher").body == "method DELETE is not allowed for api.openai.com"
	decision("api.openai.com", "POST", "/admin", "researcher").body == "this path is not allowed for api.openai.com"
	decision("other.example.com", "POST", "/v1/chat", "researcher").body == "no route for host other.example.com"
	not decision("api.openai.com", "POST", "/admin", "researcher").allowed
}
