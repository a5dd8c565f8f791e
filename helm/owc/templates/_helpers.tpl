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

{{/* A rollout's candidate with an image of its own (candidate.image): its worker group, and
     the custom Ray resource that group offers and the candidate's replicas take in place of
     CPUs (candidate.ray_resources, set in owc.config). */}}
{{- define "owc.candidateGroup" -}}
{{- printf "%s-candidate" (include "owc.engineGroup" .) }}
{{- end }}

{{- define "owc.candidateResource" -}}
{{- printf "owc-%s" (include "owc.candidateGroup" .) }}
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
{{- range $name, $m := $cfg.models }}
{{- if and $m.candidate $m.candidate.image }}{{/* pinned to its own worker group (rayservice.yaml) */}}
{{- $_ := set $m.candidate "ray_resources" (dict (include "owc.candidateResource" $name) 1) }}
{{- end }}
{{- end }}
{{- $batch := deepCopy (default (dict) $cfg.batch) }}
{{- with (include "owc.batchStoreDir" .) }}
{{- $_ = set $batch "store_dir" . }}
{{- else }}
{{- $_ = set $batch "enabled" false }}
{{- end }}
{{- $_ = set $cfg "batch" $batch }}
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

{{/* The owc config's defaults the templates fill in (files/config-defaults.yaml, generated
     from the config models by `make chart-files`). */}}
{{- define "owc.configDefaults" -}}
{{ .Files.Get "files/config-defaults.yaml" }}
{{- end }}

{{/* owc.gateway.replicas as {min, max, initial}: an int means a fixed count; unset keys take
     the config's defaults (cluster/config/gateway.py GatewayReplicas); initial defaults to min. */}}
{{- define "owc.gatewayReplicas" -}}
{{- $d := (fromYaml (include "owc.configDefaults" .)).gateway.replicas }}
{{- $r := (fromYaml (include "owc.config" .)).gateway.replicas | default (dict) }}
{{- if kindIs "map" $r }}
{{- $min := int (hasKey $r "min" | ternary $r.min $d.min) }}
{{- $max := int (hasKey $r "max" | ternary $r.max $d.max) }}
min: {{ $min }}
max: {{ $max }}
initial: {{ $r.initial | default $min | int }}
{{- else }}
min: {{ int $r }}
max: {{ int $r }}
initial: {{ int $r }}
{{- end }}
{{- end }}

{{/* The drain timings of every Ray pod, in one place (values `drain`):
     engines   a Ray node drain with deadline drain_timeout_s + serveStopSeconds, then
               exitSeconds for the raylet and vLLM to exit;
     gateways  endpointDelaySeconds for endpoints to drop the pod, then the same node drain
               while the gateway process drains, and exitSeconds;
     head      the GCS and the Serve controller outlive every worker's drain. */}}
{{- define "owc.drainTimings" -}}
{{- $d := .Values.drain }}
{{- $cfg := fromYaml (include "owc.config" .) }}
{{- $defaults := fromYaml (include "owc.configDefaults" .) }}
{{- $gwDrain := ceil ((default (dict) $cfg.gateway.autoscaling).drain_timeout_s | default $defaults.gateway.drain_timeout_s) | int }}
{{- $gwGrace := add $d.endpointDelaySeconds $gwDrain $d.serveStopSeconds $d.exitSeconds | int }}
{{- $longest := $gwDrain }}
{{- $graces := list $gwGrace }}
gateway:
  drain: {{ $gwDrain }}
  rayDrain: {{ add $gwDrain $d.serveStopSeconds | int }}
  grace: {{ $gwGrace }}
engines:
{{- range $name, $m := $cfg.models }}
{{- $drain := ceil ((default (dict) $m.autoscaling).drain_timeout_s | default $defaults.engine.drain_timeout_s) | int }}
{{- $rayDrain := add $drain $d.serveStopSeconds | int }}
{{- $grace := add $rayDrain $d.exitSeconds | int }}
{{- $graces = append $graces $grace }}
{{- $longest = max $longest $drain }}
  {{ $name | quote }}: {drain: {{ $drain }}, rayDrain: {{ $rayDrain }}, grace: {{ $grace }}}
{{- end }}
{{- $headGrace := 0 }}
{{- range $graces }}{{ $headGrace = max $headGrace . }}{{ end }}
head:
  rayDrain: {{ sub $headGrace $d.exitSeconds | int }}
  grace: {{ $headGrace | int }}
# A NewCluster upgrade's old cluster stays this long after traffic has moved.
deletionDelay: {{ add $longest $d.serveStopSeconds | int }}
{{- end }}

{{/* Ray's SIGTERM handler of `ray start --block` (Ray >= 2.60) marks the node draining and
     waits this long for it to go idle before it stops the node's processes. */}}
{{- define "owc.rayDrainEnv" -}}
- name: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
  value: {{ . | quote }}
{{- end }}

{{/* Bash lines that mark this pod's Ray node draining with a deadline .deadline seconds away
     (as the Ray autoscaler and Ray's own SIGTERM handler do): Ray Serve places nothing new
     here, starts a replacement for each replica elsewhere, and by the deadline less the
     replica's graceful_shutdown_timeout_s stops it gracefully (engines: leave routing,
     finish their requests, stop vLLM; gateways: drain); the raylet exits once the node is
     idle. Not KubeRay's old `ray stop` preStop, which kills everything at once (KubeRay
     dropped it from its samples). No raylet (an idle node the autoscaler already
     drained): nothing to drain. */}}
{{- define "owc.rayNodeDrain" -}}
raylet() { grep -qx raylet /proc/[0-9]*/comm 2>/dev/null; }
if raylet; then
  node=$(timeout 60 python3 -c 'import ray; ray.init(address="auto", logging_level="ERROR", log_to_driver=False); print(ray.get_runtime_context().get_node_id())' 2>/dev/null | tail -n 1)
  [ -n "$node" ] && timeout 30 ray drain-node --node-id "$node" --reason DRAIN_NODE_REASON_PREEMPTION \
    --reason-message "pod terminating (preStop)" --deadline-remaining-seconds {{ .deadline }}
fi
{{- end }}

{{/* preStop of an engine pod: drain the Ray node, then wait (up to the deadline) until the
     raylet has exited, i.e. the engine replica has drained and stopped. */}}
{{- define "owc.enginePreStop" -}}
preStop:
  exec:
    command:
      - bash
      - -c
      - |
        end=$((SECONDS + {{ . }}))
        {{- include "owc.rayNodeDrain" (dict "deadline" "$((end - SECONDS))") | nindent 8 }}
        while [ $SECONDS -lt $end ] && raylet; do sleep 2; done
{{- end }}

{{/* preStop of a gateway pod: wait for kube-proxy and load balancers to stop sending the
     Terminating pod new connections; drain the Ray node (Serve starts a replacement gateway
     elsewhere and places nothing here); SIGTERM the gateway process (it takes no new
     connections, finishes its open requests and streams up to drain_timeout_s, exits) and
     wait for it to exit. */}}
{{- define "owc.gatewayPreStop" -}}
preStop:
  exec:
    command:
      - bash
      - -c
      - |
        sleep {{ .delay }}
        end=$((SECONDS + {{ .drain }} + 5))
        {{- include "owc.rayNodeDrain" (dict "deadline" .rayDrain) | nindent 8 }}
        pids=$(grep -l -a -E 'cluster[.]gateway[.]main' /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)
        [ -n "$pids" ] || exit 0
        kill -TERM $pids 2>/dev/null
        for p in $pids; do
          while [ $SECONDS -lt $end ] && kill -0 "$p" 2>/dev/null; do sleep 1; done
        done
{{- end }}

{{/* Seconds the ingress / load balancer may wait for the gateway's next byte. */}}
{{- define "owc.idleTimeout" -}}
{{- if .Values.ingress.idleTimeoutSeconds }}
{{- .Values.ingress.idleTimeoutSeconds | int }}
{{- else }}
{{- $limits := default (dict) (fromYaml (include "owc.config" .)).gateway.limits }}
{{- $defaults := fromYaml (include "owc.configDefaults" .) }}
{{- add (ceil ($limits.request_timeout_s | default $defaults.gateway.request_timeout_s)) 30 | int }}
{{- end }}
{{- end }}

{{/* Gateway pods mount the model cache too when it can be shared (ReadWriteMany, or a claim
of your own): the run-time adapters file lives there. Empty string: not shared. */}}
{{- define "owc.gatewaySharesModelCache" -}}
{{- if and .Values.modelCache.enabled (or .Values.modelCache.existingClaim (has "ReadWriteMany" .Values.modelCache.accessModes)) -}}
true
{{- end -}}
{{- end }}

{{/* The Batch API's files on gateway pods (batchStore): a claim of its own, or a directory on the
model cache when gateway pods share it. Empty string: no shared volume (the Batch API is off). */}}
{{- define "owc.batchStoreClaim" -}}
{{- if eq .Values.batchStore.volume "claim" -}}
{{- .Values.batchStore.existingClaim | default (printf "%s-batch" (include "owc.fullname" .)) }}
{{- end -}}
{{- end }}

{{- define "owc.batchStoreDir" -}}
{{- if eq .Values.batchStore.volume "claim" -}}
/var/lib/owc/batch
{{- else if include "owc.gatewaySharesModelCache" . -}}
{{- printf "%s/owc/batch" .Values.modelCache.mountPath }}
{{- end -}}
{{- end }}

{{/* The rollouts' ConfigMap (docs/rollouts.md): each rollout's state and the operators'
     commands, written by `owc controller` (the Lease holder) and read by every gateway pod.
     Named after a hash of every model's candidate and rollout sections, so that a changed
     candidate starts a new rollout (a new, empty ConfigMap); "" when no model has one. An
     adapter's candidate (adapters.<name>.candidate) counts too, hashed with its adapter's name. */}}
{{- define "owc.rolloutConfigMap" -}}
{{- $cfg := fromYaml (include "owc.config" .) }}
{{- $c := dict }}
{{- range $name, $m := $cfg.models }}
{{- $adapters := dict }}
{{- if kindIs "map" $m.adapters }}
{{- range $a, $spec := $m.adapters }}
{{- if and (kindIs "map" $spec) $spec.candidate }}{{ $_ := set $adapters $a $spec.candidate }}{{ end }}
{{- end }}
{{- end }}
{{- if or $m.candidate $adapters }}
{{- $entry := dict "candidate" $m.candidate "rollout" (default (dict) $m.rollout) }}
{{- if $adapters }}{{ $_ := set $entry "adapters" $adapters }}{{ end }}
{{- $_ := set $c $name $entry }}
{{- end }}
{{- end }}
{{- if $c }}
{{- printf "%s-rollouts-%s" (include "owc.fullname" .) (toJson $c | sha256sum | trunc 8) }}
{{- end }}
{{- end }}

{{/* The rollouts' conformance gate in `owc controller` (docs/rollouts.md): "true" when some
     model with a candidate keeps rollout.conformance on (the default). The controller then
     lists the engine pods (this selector), holds the engine credential and may reach the
     engine port. */}}
{{- define "owc.rolloutGate" -}}
{{- $cfg := fromYaml (include "owc.config" .) }}
{{- range $name, $m := $cfg.models }}
{{- if and $m.candidate (ne (toString (default (dict) $m.rollout).conformance) "false") }}true{{ end }}
{{- end }}
{{- end }}

{{- define "owc.enginePodSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,owc.io/component=engine" (include "owc.name" .) .Release.Name }}
{{- end }}
