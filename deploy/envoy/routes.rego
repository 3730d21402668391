# The routes data.envoy.authz.allow (agentvault's built-in policies/envoy.rego)
# reads: put this file in the policy directory (--policy-dir) beside
# authz.rego and envoy.rego.
package envoy.authz

routes := {
	"api.openai.com": {
		"roles": ["researcher"],
		"methods": ["GET", "POST"],
		"path_prefixes": ["/v1/"],
		"inject": {"authorization": {"secret": "envoy/openai/api-key", "prefix": "Bearer "}},
	},
	# The key comes from SDS (`secret:envoy/anthropic/api-key`) through
	# Envoy's credential_injector; the policy only decides who may call.
	"api.anthropic.com": {
		"roles": ["researcher"],
		"methods": ["POST"],
		"path_prefixes": ["/v1/"],
	},
	# mutual TLS with the pod's SVID, served over SDS.
	"tools.agents.internal": {"roles": ["researcher"]},
}
