{{/* The chart name, or nameOverride. */}}
{{- define "agentvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name when it already says agentvault. */}}
{{- define "agentvault.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "agentvault.webhookName" -}}
{{- printf "%s-webhook" (include "agentvault.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentvault.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "agentvault.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentvault.redisName" -}}
{{- printf "%s-redis" (include "agentvault.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentvault.injectorConfigMapName" -}}
{{- printf "%s-injector" (include "agentvault.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The image every agentvault container runs (tag defaults to appVersion). */}}
{{- define "agentvault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels on every object. Deliberately no chart version: a chart upgrade should not touch every object. */}}
{{- define "agentvault.labels" -}}
app.kubernetes.io/name: {{ include "agentvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentvault
{{- end -}}

{{- define "agentvault.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ include "agentvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "agentvault.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "agentvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* The namespaces the webhook never mutates: its own, kube-system, and webhook.excludeNamespaces. */}}
{{- define "agentvault.excludedNamespaces" -}}
{{- $ns := list .Release.Namespace "kube-system" -}}
{{- range .Values.webhook.excludeNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* The Redis URL the sidecars use: the in-chart Redis, else redis.url, else none (embedded store). */}}
{{- define "agentvault.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc:6379/" (include "agentvault.redisName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The policies ConfigMap the sidecars mount, or empty for the built-in policy. */}}
{{- define "agentvault.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap -}}
{{- .Values.policies.existingConfigMap -}}
{{- else if .Values.policies.namespaces -}}
{{- .Values.policies.configMapName -}}
{{- end -}}
{{- end -}}

{{/* Hardened container securityContext shared by the webhook and Redis. */}}
{{- define "agentvault.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
