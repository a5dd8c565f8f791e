{{/* Chart name, truncated to 63 characters. */}}
{{- define "owc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, 63-character truncation. */}}
{{- define "owc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "owc.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "owc.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "owc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "owc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "owc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "owc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "owc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The engine credential: only the gateway holds it; the engines answer nothing else. */}}
{{- define "owc.engineKeySecret" -}}
{{- .Values.engineKey.existingSecret | default (printf "%s-engine-key" (include "owc.fullname" .)) }}
{{- end }}

{{- define "owc.engineKeyEnv" -}}
- name: OWC_ENGINE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "owc.engineKeySecret" . }}
      key: {{ .Values.engineKey.secretKey }}
{{- end }}

{{/* A random secret value kept across `helm upgrade`: the live Secret's when it exists. */}}
{{- define "owc.keptSecret" -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $live $live.data (hasKey $live.data .key) }}
{{- index $live.data .key | b64dec }}
{{- else }}
{{- printf "owc-%s" (randAlphaNum 43) }}
{{- end }}
{{- end }}

{{- define "owc.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "owc.fullname" .)) }}
{{- end }}

{{- define "owc.modelCacheClaim" -}}
{{- .Values.modelCache.existingClaim | default (printf "%s-models" (include "owc.fullname" .)) }}
{{- end }}

{{/* Worker group name of a model: DNS-safe, short. */}}
{{- define "owc.engineGroup" -}}
{{- printf "engine-%s" (regexReplaceAll "[^a-z0-9-]+" (lower .) "-") | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* The owc config the cluster runs: the user's, with the Kubernetes-specific settings.
     No models configured: the chart's default model (defaultModel). */}}
{{- define "owc.config" -}}
{{- $cfg := deepCopy .Values.owc }}
{{- if not $cfg.models }}
{{- $_ := set $cfg "models" (dict .Values.defaultModel.name (deepCopy .Values.defaultModel.config)) }}
{{- end }}
{{- $gw := deepCopy (default (dict) $cfg.gateway) }}
{{- $_ := set $gw "host" "0.0.0.0" }}
{{- $_ = set $gw "port" 9000 }}
{{- $_ = set $gw "metrics_port" 9001 }}
{{- $_ = set $gw "api_keys_file" (printf "/etc/owc/keys/%s" .Values.apiKeys.secretKey) }}
{{- $_ = set $gw "api_keys_env" nil }}
{{- $_ = set $gw "ray_resources" (dict "owc-gateway" 1) }}
{{- with (include "owc.storeConfig" . | fromYaml) }}
{{- $_ = set $gw "store" . }}
{{- end }}
{{- $_ = set $cfg "gateway" $gw }}
{{- $_ = set $cfg "engine_network" (dict "bind_host" "0.0.0.0" "port" (int .Values.engineWorkers.port)) }}
{{- $_ = set $cfg "monitoring" (dict "file_sd_dir" nil) }}
{{- if .Values.modelCache.enabled }}
{{- $_ = set $cfg "model_cache_dir" (printf "%s/owc" .Values.modelCache.mountPath) }}
{{- else }}
{{- $_ = set $cfg "model_cache_dir" "/home/owc/.cache/owc/models" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Pod security context shared by every pod of the release. */}}
{{- define "owc.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "owc.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{/* Writable scratch space on a read-only root filesystem: Ray's session dir, caches. */}}
{{- define "owc.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/owc/.cache
{{- end }}

{{- define "owc.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- end }}

{{- define "owc.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Liveness of a Ray worker: its raylet answers through the dashboard agent. */}}
{{- define "owc.rayletLiveness" -}}
exec:
  command: ["bash", "-c", "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"]
periodSeconds: 10
failureThreshold: 6
{{- end }}

{{/* monitoring.ttftSloSeconds as the gateway's TTFT histogram labels its bucket bound
(Python's float repr: 2 -> "2.0", 2.5 -> "2.5"); the shipped rules and dashboards say 2.0. */}}
{{- define "owc.ttftSloLabel" -}}
{{- $s := toString .Values.monitoring.ttftSloSeconds }}
{{- if not (contains "." $s) }}{{ $s = printf "%s.0" $s }}{{ end }}
{{- $s }}
{{- end }}

{{/* gateway.store from tenancyStore: the internal Redis's Service, or the external URL
     (from a Secret through OWC_TENANCY_STORE_URL on gateway pods when one is given). */}}
{{- define "owc.storeConfig" -}}
{{- $t := .Values.tenancyStore }}
{{- if eq $t.mode "internal" }}
url: {{ printf "redis://%s-redis:6379/0" (include "owc.fullname" .) | quote }}
on_failure: {{ $t.onFailure }}
{{- else if eq $t.mode "external" }}
url: {{ $t.external.url | default "redis://unset.invalid:6379/0" | quote }}
{{- if $t.external.existingSecret }}
url_env: OWC_TENANCY_STORE_URL
{{- end }}
on_failure: {{ $t.onFailure }}
{{- end }}
{{- end }}

{{/* Gateway-only env: the tenancy store's URL from its Secret. */}}
{{- define "owc.gatewayStoreEnv" -}}
{{- if and (eq .Values.tenancyStore.mode "external") .Values.tenancyStore.external.existingSecret }}
- name: OWC_TENANCY_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.tenancyStore.external.existingSecret }}
      key: {{ .Values.tenancyStore.external.secretKey }}
{{- end }}
{{- end }}
