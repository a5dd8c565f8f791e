{{/* Impossible values fail the render with a message that names the value to fix. */}}
{{- define "owc.validate" -}}
{{- $models := (fromYaml (include "owc.config" .)).models }}
{{- range $name, $m := $models }}
{{- $tp := int (default 1 $m.tensor_parallel_size) }}
{{- $pp := int (default 1 $m.pipeline_parallel_size) }}
{{- $kind := (default (dict) $m.accelerator).kind | default "cpu" }}
{{- if and (eq $kind "gpu") (gt $pp 1) }}
{{- fail (printf "owc.models.%s.pipeline_parallel_size > 1 is not supported yet: the engine's placement group is not handed to vLLM; use tensor_parallel_size" $name) }}
{{- end }}
{{- if and (eq $kind "gpu") (gt (mul $tp $pp) (int $.Values.engineWorkers.gpusPerNode)) }}
{{- fail (printf "owc.models.%s: tensor_parallel_size x pipeline_parallel_size = %d GPUs, more than engineWorkers.gpusPerNode = %d (one replica's GPUs must fit on one node)" $name (mul $tp $pp) (int $.Values.engineWorkers.gpusPerNode)) }}
{{- end }}
{{- if and (eq $kind "cpu") (gt $tp 1) }}
{{- fail (printf "owc.models.%s: tensor parallelism needs accelerator.kind gpu on Kubernetes" $name) }}
{{- end }}
{{- end }}
{{- $gwr := fromYaml (include "owc.gatewayReplicas" .) }}
{{- if gt (int $gwr.min) (int $gwr.max) }}
{{- fail (printf "owc.gateway.replicas.min (%d) > owc.gateway.replicas.max (%d)" (int $gwr.min) (int $gwr.max)) }}
{{- end }}
{{- if or (lt (int $gwr.initial) (int $gwr.min)) (gt (int $gwr.initial) (int $gwr.max)) }}
{{- fail "owc.gateway.replicas.initial must lie within [min, max]" }}
{{- end }}
{{- range $name, $m := (default (dict) .Values.owc.models) }}
{{- if and $m.candidate $m.candidate.ray_resources }}
{{- fail (printf "owc.models.%s.candidate.ray_resources is the chart's: set candidate.image and the chart pins the candidate to a worker group of its own (docs/rollouts.md)" $name) }}
{{- end }}
{{- end }}
{{- if and (include "owc.rolloutConfigMap" .) (not .Values.controller.enabled) }}
{{- fail "a model has a candidate but controller.enabled is false: on Kubernetes the rollout analysis runs in owc controller (docs/rollouts.md)" }}
{{- end }}
{{- if .Values.controller.enabled }}
{{- $scaled := gt (int $gwr.max) (int $gwr.min) }}
{{- range $name, $m := $models }}
{{- if (default (dict) $m.autoscaling).enabled }}{{ $scaled = true }}{{ end }}
{{- end }}
{{- if include "owc.rolloutConfigMap" . }}{{ $scaled = true }}{{ end }}{{/* it runs the rollout analysis (a model's or an adapter's candidate) */}}
{{- if not $scaled }}
{{- fail "controller.enabled but no owc.models.*.autoscaling.enabled and owc.gateway.replicas.max = min: the controller would have nothing to scale" }}
{{- end }}
{{- if not .Values.controller.prometheusUrl }}
{{- fail "controller.enabled needs controller.prometheusUrl (the controller's signals come from Prometheus)" }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.enabled needs ingress.host" }}
{{- end }}
{{- if and .Values.ingress.tls.enabled (not .Values.ingress.tls.secretName) }}
{{- fail "ingress.tls.enabled needs ingress.tls.secretName" }}
{{- end }}
{{- if and .Values.gcsFaultTolerance.enabled (not .Values.gcsFaultTolerance.redisAddress) }}
{{- fail "gcsFaultTolerance.enabled needs gcsFaultTolerance.redisAddress" }}
{{- end }}
{{- if not (has .Values.tenancyStore.mode (list "none" "internal" "external")) }}
{{- fail "tenancyStore.mode must be none, internal or external" }}
{{- end }}
{{- if and (eq .Values.tenancyStore.mode "external") (not .Values.tenancyStore.external.url) (not .Values.tenancyStore.external.existingSecret) }}
{{- fail "tenancyStore.mode external needs tenancyStore.external.url or tenancyStore.external.existingSecret" }}
{{- end }}
{{- if not (has .Values.upgradeStrategy (list "NewCluster" "None")) }}
{{- fail "upgradeStrategy must be NewCluster or None" }}
{{- end }}
{{- $engine := int .Values.engineWorkers.port }}
{{- if has $engine (list 6379 8000 8080 8265 9000 9001 9500 10001 52365) }}
{{- fail (printf "engineWorkers.port %d is a port of Ray, the gateway or the controller: choose another (e.g. 8100)" $engine) }}
{{- end }}
{{- if ne .Values.rayVersion "2.60.0" }}
{{- fail (printf "rayVersion %s: the owc image carries Ray 2.60.0" .Values.rayVersion) }}
{{- end }}
{{- end }}
