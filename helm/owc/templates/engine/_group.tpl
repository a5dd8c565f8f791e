{{/* One engine worker group of a model (rayservice.yaml): the model's own, or, when its
     candidate has an image, the candidate's (docs/rollouts.md). Params: ctx, name, m (the
     model section), group, image, min, max, initial, t (drain timings), pin (the candidate's
     Ray resource name; "": the model's group). */}}
{{- define "owc.engineWorkerGroup" -}}
{{- $ctx := .ctx }}
{{- $name := .name }}
{{- $m := .m }}
{{- $t := .t }}
{{- $tp := int ($m.tensor_parallel_size | default 1) }}
{{- $pp := int ($m.pipeline_parallel_size | default 1) }}
{{- $gpu := eq ((default (dict) $m.accelerator).kind | default "cpu") "gpu" }}
{{- $cpus := $m.cpus_per_replica | default 1 }}
{{- $startup := $m.startup_timeout_s | default 600 -}}
# {{ $name }}: one engine replica per pod ({{ if $gpu }}{{ mul $tp $pp }} GPU(s){{ else }}CPU{{ end }}); the
# Ray autoscaler keeps between replicas.min and replicas.max pods.
- groupName: {{ .group }}
  replicas: {{ .initial }}
  minReplicas: {{ .min }}
  maxReplicas: {{ .max }}
  rayStartParams:
    {{- if .pin }}
    # the candidate's own group: Ray sees no CPU here, only the candidate's resource
    num-cpus: "0"
    resources: '"{\"{{ .pin }}\": 1}"'
    {{- else }}
    num-cpus: {{ ceil $cpus | int | toString | quote }}
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "owc.labels" $ctx | nindent 8 }}
        owc.io/component: engine
        owc.io/job: owc-engine
        owc.io/engine-group: {{ .group }}
      annotations:
        owc.io/model: {{ $name | quote }}
    spec:
      automountServiceAccountToken: false
      # The model's autoscaling.drain_timeout_s ({{ $t.drain }} s) + drain.serveStopSeconds
      # (the Ray node drain's deadline) + drain.exitSeconds.
      terminationGracePeriodSeconds: {{ $t.grace }}
      securityContext:
        {{- include "owc.podSecurityContext" $ctx | nindent 8 }}
      {{- include "owc.imagePullSecrets" $ctx | nindent 6 }}
      containers:
        - name: ray-worker
          image: {{ .image }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          resources:
            {{- $mem := $ctx.Values.engineWorkers.cpuMemory }}
            {{- if $gpu }}
            {{- $mem = printf "%dGi" (mul (int (trimSuffix "Gi" $ctx.Values.engineWorkers.memoryPerGpu)) (mul $tp $pp)) }}
            {{- end }}
            requests:
              cpu: {{ ceil $cpus | int | toString | quote }}
              memory: {{ $mem }}
            limits:
              cpu: {{ ceil $cpus | int | toString | quote }}
              memory: {{ $mem }}
              {{- if $gpu }}
              {{ $ctx.Values.engineWorkers.gpuResourceName }}: {{ mul $tp $pp }}
              {{- end }}
          ports:
            - {containerPort: {{ $ctx.Values.engineWorkers.port }}, name: engine}
            - {containerPort: 8080, name: metrics}
          # Model loads take minutes (downloads, weights to GPU, compilation): the
          # probe allows the model's startup_timeout_s ({{ $startup }} s).
          startupProbe:
            httpGet: {path: /health, port: engine}
            periodSeconds: 10
            failureThreshold: {{ add (ceil (divf $startup 10)) 6 | int }}
          livenessProbe:
            {{- include "owc.rayletLiveness" $ctx | nindent 12 }}
          readinessProbe:
            httpGet: {path: /health, port: engine}
            periodSeconds: 10
            failureThreshold: 3
          lifecycle:
            {{- include "owc.enginePreStop" $t.rayDrain | nindent 12 }}
          env:
            {{- include "owc.engineKeyEnv" $ctx | nindent 12 }}
            {{- include "owc.rayDrainEnv" $t.rayDrain | nindent 12 }}
          {{- if $ctx.Values.hubToken.existingSecret }}
            - name: HF_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ $ctx.Values.hubToken.existingSecret }}
                  key: {{ $ctx.Values.hubToken.secretKey }}
          {{- end }}
          securityContext:
            {{- include "owc.containerSecurityContext" $ctx | nindent 12 }}
          volumeMounts:
            {{- include "owc.scratchMounts" $ctx | nindent 12 }}
            - name: dshm
              mountPath: /dev/shm
            {{- if $ctx.Values.modelCache.enabled }}
            - name: models
              mountPath: {{ $ctx.Values.modelCache.mountPath }}
            {{- end }}
      volumes:
        {{- include "owc.scratchVolumes" $ctx | nindent 8 }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $ctx.Values.engineWorkers.shmSize }}
        {{- if $ctx.Values.modelCache.enabled }}
        - name: models
          persistentVolumeClaim:
            claimName: {{ include "owc.modelCacheClaim" $ctx }}
        {{- end }}
      {{- if $gpu }}
      {{- with $ctx.Values.engineWorkers.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $ctx.Values.engineWorkers.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- end }}
{{- end }}
