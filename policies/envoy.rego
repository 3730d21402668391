# Envoy's external authorization for this pod: `data.envoy.authz.allow`,
# evaluated on every request Envoy sends to the agentvault socket. The input
# is the OPA-Envoy plugin's (`input.attributes.request.http`,
# `input.parsed_path`, `input.parsed_query`, ...) plus agentvault's
# `input.agentvault.subject` (the pod's SPIFFE ID, tenant and agent, and the
# `role` Envoy names for the calling app in `context_extensions`).
#
# It allows nothing until you name routes. Put a file beside this one, in
# the same package, that defines `routes`, keyed by upstream host:
#
#   package envoy.authz
#
#   routes := {"api.openai.com": {
#       "roles": ["researcher"],            # who may call it (required)
#       "methods": ["POST"],                # optional
#       "path_prefixes": ["/v1/"],          # optional
#       "inject": {"authorization": {"secret": "envoy/openai/api-key", "prefix": "Bearer "}},
#   }}
#
# `inject` is agentvault's `agentvault_inject`: the sidecar reads each secret
# as the Envoy caller (write it with `scope: envoy`, so the app's own role
# cannot read it) and sets the header on the upstream request, replacing
# whatever the app sent. If the secret cannot be read, the request is denied.
package envoy.authz

import rego.v1

default routes := {}

http_request := input.attributes.request.http

# The upstream host, without a port.
host := split(http_request.host, ":")[0]

role := input.agentvault.subject.role

route := routes[host]

role_allowed if role in route.roles

method_allowed if not route.methods

method_allowed if http_request.method in route.methods

path_allowed if not route.path_prefixes

path_allowed if {
	some prefix in route.path_prefixes
	startswith(http_request.path, prefix)
}

permitted if {
	role_allowed
	method_allowed
	path_allowed
}

default allow := {"allowed": false, "http_status": 403, "body": "no route allows this request"}

allow := {
	"allowed": true,
	"agentvault_inject": object.get(route, "inject", {}),
} if permitted

allow := {"allowed": false, "http_status": 403, "body": reason} if not permitted

reason := sprintf("no route for host %s", [host]) if {
	not route
} else := sprintf("role %v may not call %s", [role, host]) if {
	not role_allowed
} else := sprintf("method %s is not allowed for %s", [http_request.method, host]) if {
	not method_allowed
} else := sprintf("this path is not allowed for %s", [host])
