{{/*
Names, labels and the pieces every avgate process shares. Each process's own
template (gateway.yaml, identity.yaml, ...) spells out its Deployment and
Service and includes these for the parts that must not drift apart.
*/}}

{{- define "avgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "avgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "avgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The avgate processes, in the order the chart renders them. */}}
{{- define "avgate.processes" -}}
gateway identity screening reporting complaints
{{- end }}

{{/* Name of a process's Deployment, Service and ServiceAccount. Args: dict root, process. */}}
{{- define "avgate.processFullname" -}}
{{- printf "%s-%s" (include "avgate.fullname" .root | trunc 52 | trimSuffix "-") .process }}
{{- end }}

{{/* Common labels. Args: dict root, process. */}}
{{- define "avgate.labels" -}}
helm.sh/chart: {{ include "avgate.chart" .root }}
{{ include "avgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: avgate
{{- end }}

{{/* Selector labels. Args: dict root, process. */}}
{{- define "avgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "avgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .process }}
{{- end }}

{{/* The image reference: digest if given, else the tag, else the chart appVersion. */}}
{{- define "avgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* ServiceAccount of a process. Args: dict root, process. */}}
{{- define "avgate.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "avgate.processFullname" . -}}
{{- else -}}
{{- $cfg := index .root.Values .process -}}
{{- default "default" (dig "serviceAccount" "name" "" $cfg) -}}
{{- end -}}
{{- end }}

{{/* host:port of a process's gRPC Service. Args: dict root, process. */}}
{{- define "avgate.grpcTarget" -}}
{{- $cfg := index .root.Values .process -}}
{{- printf "%s:%v" (include "avgate.processFullname" .) $cfg.grpcPort -}}
{{- end }}

{{/* host:port of Triton's gRPC endpoint. */}}
{{- define "avgate.tritonTarget" -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s:8001" (include "avgate.processFullname" (dict "root" . "process" "triton")) -}}
{{- else -}}
{{- required "triton.externalUrl is required when triton.enabled is false" .Values.triton.externalUrl -}}
{{- end -}}
{{- end }}

{{- define "avgate.databaseSecret" -}}
{{- required "database.existingSecret must name a pre-created Secret with the database URLs (see values.yaml)" .Values.database.existingSecret -}}
{{- end }}

{{- define "avgate.keysSecret" -}}
{{- required "keys.existingSecret must name a pre-created Secret with the signing keys (see values.yaml)" .Values.keys.existingSecret -}}
{{- end }}

{{/*
A process's *_DATABASE_URL from the pre-created Secret.
Args: dict root, name (env var), process (secret key prefix).
*/}}
{{- define "avgate.databaseUrlEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "avgate.databaseSecret" .root }}
      key: {{ .process }}-url
{{- end }}

{{/*
Environment every avgate process gets. The production profile is fixed: this
chart deploys production, and the processes refuse local stand-ins there.
Args: dict root, process (omit signing key for the migration Job: process "").
*/}}
{{- define "avgate.sharedEnv" -}}
- name: AVGATE_ENV
  value: production
- name: AVGATE_GENERATE_KEYS
  value: "false"
- name: AVGATE_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: AVGATE_OTEL_EXPORTER
  value: {{ .root.Values.otel.exporter | quote }}
{{- with .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "avgate-%s" (default "migrate" .process) | quote }}
{{- if .process }}
- name: AVGATE_SIGNING_KEY_FILE
  value: {{ printf "%s/%s.key" .root.Values.keys.signingKeyDir .process | quote }}
- name: AVGATE_TRUSTED_KEYS_DIR
  value: {{ .root.Values.keys.trustedKeysDir | quote }}
{{- end }}
- name: AVGATE_STATE_DIR
  value: /tmp/avgate
{{- if .process }}
- name: AVGATE_SHUTDOWN_GRACE_SECONDS
  value: {{ .root.Values.shutdownGraceSeconds | quote }}
- name: {{ upper .process }}_GRPC_HOST
  value: {{ .root.Values.grpcHost | quote }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod template annotations: metrics scraping plus user annotations. Args: dict root, process. */}}
{{- define "avgate.podAnnotations" -}}
{{- $cfg := index .root.Values .process -}}
{{- $annotations := dict -}}
{{- if .root.Values.metrics.scrapeAnnotations -}}
{{- $_ := set $annotations "prometheus.io/scrape" "true" -}}
{{- $_ := set $annotations "prometheus.io/port" (toString $cfg.metricsPort) -}}
{{- $_ := set $annotations "prometheus.io/path" .root.Values.metrics.path -}}
{{- end -}}
{{- $annotations = merge $annotations (default (dict) .root.Values.podAnnotations) -}}
{{- with $annotations -}}
{{- toYaml . -}}
{{- end -}}
{{- end }}

{{/* Container ports. Args: dict root, process. */}}
{{- define "avgate.containerPorts" -}}
{{- $cfg := index .root.Values .process -}}
- name: grpc
  containerPort: {{ $cfg.grpcPort }}
  protocol: TCP
- name: metrics
  containerPort: {{ $cfg.metricsPort }}
  protocol: TCP
{{- end }}

{{/*
Native gRPC probes (grpc.health.v1, overall server status) on the gRPC port.
A draining process reports NOT_SERVING, so readiness drops it from endpoints.
Args: dict root, process.
*/}}
{{- define "avgate.probes" -}}
{{- $cfg := index .root.Values .process -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  grpc:
    port: {{ $cfg.grpcPort }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ $cfg.grpcPort }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ $cfg.grpcPort }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end }}

{{/*
preStop pause before SIGTERM, so routing stops before the drain starts. Uses
python because the image carries no shell tools the chart relies on.
*/}}
{{- define "avgate.lifecycle" -}}
{{- if gt (int .Values.preStopSleepSeconds) 0 -}}
lifecycle:
  preStop:
    exec:
      command: ["python", "-c", "import time; time.sleep({{ int .Values.preStopSleepSeconds }})"]
{{- end -}}
{{- end }}

{{/* Volume mounts of a process. Args: dict root, process. */}}
{{- define "avgate.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: signing-key
  mountPath: {{ .root.Values.keys.signingKeyDir }}
  readOnly: true
- name: trusted-keys
  mountPath: {{ .root.Values.keys.trustedKeysDir }}
  readOnly: true
{{- end }}

{{/*
Volumes of a process: /tmp, its own private key only, every issuer's public
key, and for reporting the evidence volume and its key-encryption keys.
Args: dict root, process.
*/}}
{{- define "avgate.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpVolume.sizeLimit }}
- name: signing-key
  secret:
    secretName: {{ include "avgate.keysSecret" .root }}
    defaultMode: 0440
    items:
      - key: {{ .process }}.key
        path: {{ .process }}.key
      {{- if eq .process "reporting" }}
      - key: ledger.skey
        path: ledger.skey
      {{- end }}
{{- if eq .process "reporting" }}
- name: evidence
  persistentVolumeClaim:
    claimName: {{ required "reporting.evidence.existingClaim must name a pre-created PersistentVolumeClaim for the evidence store" .root.Values.reporting.evidence.existingClaim }}
- name: evidence-kek
  secret:
    secretName: {{ default (include "avgate.keysSecret" .root) .root.Values.reporting.evidence.kekSecret }}
    defaultMode: 0440
    items:
      - key: evidence.kek
        path: evidence.kek
{{- end }}
{{- if eq .process "identity" }}
- name: identity-vault-keys
  secret:
    secretName: {{ default (include "avgate.keysSecret" .root) .root.Values.identity.vault.keySecret }}
    defaultMode: 0440
    items:
      - key: identity-vault.kek
        path: identity-vault.kek
      - key: identity-index.keys
        path: identity-index.keys
      - key: identity-codes.key
        path: identity-codes.key
{{- end }}
- name: trusted-keys
  {{- if .root.Values.keys.trustedKeysConfigMap }}
  configMap:
    name: {{ .root.Values.keys.trustedKeysConfigMap }}
  {{- else }}
  secret:
    secretName: {{ include "avgate.keysSecret" .root }}
  {{- end }}
    defaultMode: 0444
    items:
      {{- range $issuer := splitList " " (include "avgate.processes" .root) }}
      - key: {{ $issuer }}.pub
        path: {{ $issuer }}.pub
      {{- end }}
{{- end }}

{{/* Where reporting finds the evidence key-encryption keys (its own read-only Secret volume). */}}
{{- define "avgate.evidenceKekDir" -}}
/var/run/avgate/evidence-kek
{{- end }}

{{- define "avgate.evidenceKekFile" -}}
{{- printf "%s/evidence.kek" (include "avgate.evidenceKekDir" .) -}}
{{- end }}

{{/* Where identity finds its personal-data KEKs and blind-index keys (its own read-only Secret volume). */}}
{{- define "avgate.identityVaultKeyDir" -}}
/var/run/avgate/identity-vault
{{- end }}

{{/* Scheduling: a process's own settings, else the chart-wide ones. Args: dict root, process. */}}
{{- define "avgate.scheduling" -}}
{{- $cfg := index .root.Values .process -}}
{{- with (default .root.Values.nodeSelector $cfg.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.tolerations $cfg.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.affinity $cfg.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.topologySpreadConstraints $cfg.topologySpreadConstraints) }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not $constraint.labelSelector }}
  {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (fromYaml (include "avgate.selectorLabels" $))) }}
  {{- end }}
  - {{ toYaml $constraint | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The pod spec fields every avgate process shares, after the containers.
Args: dict root, process.
*/}}
{{- define "avgate.podSpecCommon" -}}
{{- $v := .root.Values -}}
{{- if lt (int $v.terminationGracePeriodSeconds) (add (int $v.preStopSleepSeconds) (int $v.shutdownGraceSeconds)) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must cover preStopSleepSeconds (%v) + shutdownGraceSeconds (%v), or in-flight RPCs are killed mid-drain" $v.terminationGracePeriodSeconds $v.preStopSleepSeconds $v.shutdownGraceSeconds) -}}
{{- end -}}
serviceAccountName: {{ include "avgate.serviceAccountName" . }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .root.Values.terminationGracePeriodSeconds }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "avgate.scheduling" . }}
volumes:
  {{- include "avgate.volumes" . | nindent 2 }}
{{- end }}

{{/*
The process's ClusterIP gRPC Service for the internal services.
Args: dict root, process.
*/}}
{{- define "avgate.internalService" -}}
{{- $cfg := index .root.Values .process -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "avgate.processFullname" . }}
  labels:
    {{- include "avgate.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "avgate.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $cfg.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}

{{/* An optional HPA for a process. Args: dict root, process. */}}
{{- define "avgate.hpa" -}}
{{- $cfg := index .root.Values .process -}}
{{- if $cfg.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "avgate.processFullname" . }}
  labels:
    {{- include "avgate.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "avgate.processFullname" . }}
  minReplicas: {{ $cfg.autoscaling.minReplicas }}
  maxReplicas: {{ $cfg.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $cfg.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}
