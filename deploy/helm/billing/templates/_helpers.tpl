{{/* Names, labels and the pieces every workload shares. */}}

{{- define "billing.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's prefix: "billing" for `helm install billing`, "billing-canary" for the canary. */}}
{{- define "billing.fullname" -}}
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

{{- define "billing.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The services in the order the launcher migrates them; only enabled ones. */}}
{{- define "billing.enabledServices" -}}
{{- $out := list }}
{{- range $name := list "checkout" "webhook-ingest" "ledger" "metering" "reconciler" }}
{{- $svc := index $.Values.services $name | default dict }}
{{- if $svc.enabled }}
{{- $out = append $out $name }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "<service>"). */}}
{{- define "billing.labels" -}}
helm.sh/chart: {{ include "billing.chart" .root }}
{{ include "billing.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: billing-platform
{{- end }}

{{- define "billing.selectorLabels" -}}
app.kubernetes.io/name: {{ include "billing.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "billing.componentName" -}}
{{- printf "%s-%s" (include "billing.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <PACKAGE>, the prefix of a service's own settings. */}}
{{- define "billing.envPrefix" -}}
{{- .package | upper }}
{{- end }}

{{- define "billing.image" -}}
{{- printf "%s-%s:%s" .root.Values.image.repository .component (.root.Values.image.tag | default .root.Chart.AppVersion) }}
{{- end }}

{{/* The one Secret every credential is read from. */}}
{{- define "billing.secretName" -}}
{{- if .Values.secrets.externalSecret.enabled }}
{{- .Values.secrets.externalSecret.name | default (printf "%s-secrets" (include "billing.fullname" .)) }}
{{- else if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- fail "set secrets.existingSecret to the Secret holding the credentials, or enable secrets.externalSecret" }}
{{- end }}
{{- end }}

{{- define "billing.jwtDir" -}}/etc/billing/jwt{{- end }}

{{- define "billing.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "billing.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Settings every service process reads (BILLING_*), none secret. */}}
{{- define "billing.commonEnv" -}}
{{- $c := .Values.config }}
- name: BILLING_ENVIRONMENT
  value: {{ $c.environment | quote }}
- name: BILLING_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: BILLING_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required" .Values.kafka.bootstrap | quote }}
- name: BILLING_TOPIC_NAMESPACE
  value: {{ $c.topicNamespace | quote }}
- name: BILLING_JWT_PUBLIC_KEYS
  value: {{ $paths := list }}{{ range .Values.secrets.jwtPublicKeys }}{{ $paths = append $paths (printf "%s/%s" (include "billing.jwtDir" $) .) }}{{ end }}{{ join "," $paths | quote }}
- name: BILLING_JWT_ISSUER
  value: {{ $c.jwt.issuer | quote }}
- name: BILLING_JWT_AUDIENCE
  value: {{ $c.jwt.audience | quote }}
- name: BILLING_MFA_MAX_AGE_S
  value: {{ $c.mfaMaxAgeS | quote }}
- name: BILLING_CORS_ALLOWED_ORIGINS
  value: {{ join "," $c.corsAllowedOrigins | quote }}
- name: BILLING_STRIPE_API_BASE
  value: {{ $c.stripeApiBase | quote }}
- name: BILLING_OPENAI_BASE_URL
  value: {{ $c.openaiBaseUrl | quote }}
- name: BILLING_OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $c.otelExporterOtlpEndpoint | quote }}
- name: FORWARDED_ALLOW_IPS
  value: {{ $c.forwardedAllowIps | quote }}
{{- end }}

{{/* A variable read from the Secret; call with (dict "name" KEY "secret" NAME). */}}
{{- define "billing.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .name }}
{{- end }}

{{/* NetworkPolicy egress every pod needs: DNS and PostgreSQL. */}}
{{- define "billing.egressBase" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podLabels | nindent 10 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    {{- include "billing.peers" .Values.postgres | trim | nindent 4 }}
  ports:
    - port: {{ .Values.postgres.port }}
      protocol: TCP
{{- end }}

{{- /* ipBlocks for `cidrs` and the `peers` as given; call with .Values.kafka or .Values.postgres. */}}
{{- define "billing.peers" -}}
{{- if not (or .cidrs .peers) }}
{{- fail "networkPolicy: kafka and postgres each need cidrs or peers" }}
{{- end }}
{{- range .cidrs }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- with .peers }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}

{{/* The enabled services the probe CronJob calls: checkout and webhook-ingest for the
checkout probe, metering for the AI probe, the reconciler for the reconciliation probe. */}}
{{- define "billing.probeServices" -}}
{{- $p := .Values.probe }}
{{- $enabled := include "billing.enabledServices" . | fromJsonArray }}
{{- $out := list }}
{{- if and $p.checkout (has "checkout" $enabled) (has "webhook-ingest" $enabled) }}
{{- $out = append (append $out "checkout") "webhook-ingest" }}
{{- end }}
{{- if and $p.ai (has "metering" $enabled) }}
{{- $out = append $out "metering" }}
{{- end }}
{{- if and $p.reconciliation (has "reconciler" $enabled) }}
{{- $out = append $out "reconciler" }}
{{- end }}
{{- toJson $out }}
{{- end }}
