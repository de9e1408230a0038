{{/*
Shared pieces of every role's template: names, labels, the env every role
reads, and the Deployment/HPA/PDB/NetworkPolicy skeletons. A role's template
file calls these with a dict:
  root       the top-level context ($)
  role       the role's name as `postfleet run` knows it (ingress-smtp, ...)
  values     the role's values block
  ...        role-specific extras, documented on each helper
*/}}

{{- define "postfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "postfleet.fullname" -}}
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

{{/* <fullname>-<role>; pass (dict "root" $ "role" "qmgr"). */}}
{{- define "postfleet.componentName" -}}
{{- printf "%s-%s" (include "postfleet.fullname" .root | trunc 48 | trimSuffix "-") .role }}
{{- end }}

{{- define "postfleet.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one role; pass (dict "root" $ "role" ROLE). */}}
{{- define "postfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* All labels of one role's objects; pass (dict "root" $ "role" ROLE). */}}
{{- define "postfleet.labels" -}}
helm.sh/chart: {{ include "postfleet.chartLabel" .root }}
{{ include "postfleet.selectorLabels" . }}
app.kubernetes.io/part-of: postfleet
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "postfleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The object name of a dependency chart, as its own fullname helper makes it. */}}
{{- define "postfleet.dependencyFullname" -}}
{{- $values := index .root.Values .name }}
{{- if $values.fullnameOverride }}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains .name .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* POSTFLEET_DATABASE_URL (and the password it is built from). */}}
{{- define "postfleet.env.database" -}}
{{- if .Values.postgresql.enabled }}
{{- $pg := include "postfleet.dependencyFullname" (dict "root" . "name" "postgresql") }}
- name: POSTFLEET_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.auth.existingSecret | default $pg }}
      key: password
- name: POSTFLEET_DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s:$(POSTFLEET_DATABASE_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username $pg .Values.postgresql.auth.database | quote }}
{{- else if .Values.externalDatabase.existingSecret.name }}
- name: POSTFLEET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret.name }}
      key: {{ .Values.externalDatabase.existingSecret.key }}
{{- else }}
- name: POSTFLEET_DATABASE_URL
  value: {{ .Values.externalDatabase.url | quote }}
{{- end }}
{{- end }}

{{/* POSTFLEET_NATS_URL. */}}
{{- define "postfleet.env.nats" -}}
{{- if .Values.nats.enabled }}
- name: POSTFLEET_NATS_URL
  value: {{ printf "nats://%s:4222" (include "postfleet.dependencyFullname" (dict "root" . "name" "nats")) | quote }}
{{- else if .Values.externalNats.existingSecret.name }}
- name: POSTFLEET_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalNats.existingSecret.name }}
      key: {{ .Values.externalNats.existingSecret.key }}
{{- else }}
- name: POSTFLEET_NATS_URL
  value: {{ .Values.externalNats.url | quote }}
{{- end }}
{{- end }}

{{/*
The Postfix parameters of `config` (global, then the role's own on top) as
POSTFLEET_<NAME> env vars. Keys the chart sets itself are left out.
Pass (dict "root" $ "values" ROLE_VALUES).
*/}}
{{- define "postfleet.env.config" -}}
{{- $reserved := list "config" "database_url" "nats_url" "http_host" "http_port" "cleanup_address" "cleanup_listen" "listeners" "myhostname" "smtpd_upstream_proxy_protocol" "smtpd_tls_cert_file" "smtpd_tls_key_file" }}
{{- $merged := merge (deepCopy (.values.config | default dict)) (deepCopy (.root.Values.config | default dict)) }}
{{- range $key, $value := $merged }}
{{- if not (has (lower $key) $reserved) }}
- name: {{ printf "POSTFLEET_%s" ($key | upper | replace "-" "_" | replace "." "_") }}
  {{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
  value: {{ toJson $value | quote }}
  {{- else if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
  value: {{ int64 $value | toString | quote }}
  {{- else if kindIs "invalid" $value }}
  value: ""
  {{- else }}
  value: {{ toString $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The drain deadline of a role that finishes work in flight on SIGTERM: its
grace period minus the preStop sleep minus 10 s of margin, as the role's
PARAM env var, unless `config` sets PARAM. A YAML list (for fromYamlArray).
Pass (dict "root" $ "values" ROLE_VALUES "param" "drain_timeout").
*/}}
{{- define "postfleet.env.drain" -}}
{{- $config := merge (deepCopy (.values.config | default dict)) (.root.Values.config | default dict) }}
{{- if not (hasKey $config .param) }}
{{- $seconds := max 1 (sub (sub (int .values.terminationGracePeriodSeconds) (int .root.Values.preStopSleepSeconds)) 10) }}
- name: {{ printf "POSTFLEET_%s" (upper .param) }}
  value: {{ $seconds | toString | quote }}
{{- else }}
[]
{{- end }}
{{- end }}

{{/*
The env of a role: connections, HTTP listener, cleanup's address for the
roles that submit to it, config, extras.
Pass (dict "root" $ "role" ROLE "values" ROLE_VALUES "env" LIST_OF_ENVVARS
"database" BOOL); "env" holds the role's own variables, "database" false
leaves the database out (the operator never touches the queue).
*/}}
{{- define "postfleet.env" -}}
{{- $root := .root }}
{{- if $root.Values.myhostname }}
- name: POSTFLEET_MYHOSTNAME
  value: {{ $root.Values.myhostname | quote }}
{{- end }}
{{- if or (not (hasKey . "database")) .database }}
{{- include "postfleet.env.database" $root }}
{{- end }}
{{- include "postfleet.env.nats" $root }}
- name: POSTFLEET_HTTP_HOST
  value: "0.0.0.0"
- name: POSTFLEET_HTTP_PORT
  value: {{ $root.Values.http.port | quote }}
{{- if eq .role "qmgr" }}
{{- /* The pod's name is qmgr's lease identity: a restarted container takes
its own work back at once; a replaced pod's work returns after one lease. */}}
- name: POSTFLEET_QMGR_OWNER
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if has .role (list "ingress-smtp" "filter") }}
- name: POSTFLEET_CLEANUP_ADDRESS
  value: {{ printf "%s:%v" (include "postfleet.componentName" (dict "root" $root "role" "cleanup")) $root.Values.cleanup.grpcPort | quote }}
{{- end }}
{{- if $root.Values.configFile.enabled }}
- name: POSTFLEET_CONFIG
  value: /etc/postfleet/postfleet.yaml
{{- end }}
{{- with .env }}
{{ toYaml . }}
{{- end }}
{{- include "postfleet.env.config" (dict "root" $root "values" .values) }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A role's Deployment.
Pass (dict "root" $ "role" ROLE "values" ROLE_VALUES
      "ports" LIST_OF_CONTAINERPORTS   extra container ports (besides http)
      "env" LIST_OF_ENVVARS            the role's own env vars
      "volumes" LIST "volumeMounts" LIST   the role's own volumes
      "database" BOOL                  false: no POSTFLEET_DATABASE_URL
      "replicas" INT                   fixed replica count (operator)
      "strategy" MAP                   Deployment strategy
      "serviceAccountName" STRING      the operator's account
      "autoscaling" BOOL)              true: the HPA owns replicas
*/}}
{{- define "postfleet.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $ctx := dict "root" $root "role" .role }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "postfleet.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "postfleet.labels" $ctx | nindent 4 }}
spec:
  {{- if not .autoscaling }}
  replicas: {{ .replicas | default $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "postfleet.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "postfleet.labels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- if $root.Values.configFile.enabled }}
        checksum/config: {{ toYaml $root.Values.configFile.content | sha256sum }}
        {{- end }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.http.port | quote }}
        prometheus.io/path: /metrics
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- if .serviceAccountName }}
      serviceAccountName: {{ .serviceAccountName }}
      automountServiceAccountToken: true
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .role }}
          image: {{ include "postfleet.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["run", {{ .role | quote }}]
          env:
            {{- include "postfleet.env" . | trim | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ $root.Values.http.port }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $root.Values.probes.startup | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          {{- if gt (int $root.Values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $root.Values.preStopSleepSeconds | quote }}]
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $root.Values.configFile.enabled }}
            - name: config
              mountPath: /etc/postfleet/postfleet.yaml
              subPath: postfleet.yaml
              readOnly: true
            {{- end }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpVolume.sizeLimit }}
        {{- if $root.Values.configFile.enabled }}
        - name: config
          configMap:
            name: {{ include "postfleet.fullname" $root }}-config
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A role's HorizontalPodAutoscaler; pass (dict "root" $ "role" ROLE "values" ROLE_VALUES). */}}
{{- define "postfleet.hpa" -}}
{{- $ctx := dict "root" .root "role" .role }}
{{- $a := .values.autoscaling }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "postfleet.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "postfleet.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "postfleet.componentName" $ctx }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  behavior:
    # Draining pods take terminationGracePeriodSeconds to go: scale down slowly.
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
        - type: Pods
          value: 1
          periodSeconds: 60
{{- end }}

{{/* A role's PodDisruptionBudget; pass (dict "root" $ "role" ROLE "values" ROLE_VALUES). */}}
{{- define "postfleet.pdb" -}}
{{- $ctx := dict "root" .root "role" .role }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "postfleet.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "postfleet.labels" $ctx | nindent 4 }}
spec:
  {{- if hasKey .values.pdb "minAvailable" }}
  minAvailable: {{ .values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "postfleet.selectorLabels" $ctx | nindent 6 }}
{{- end }}

{{/*
A role's NetworkPolicy. Every role takes its HTTP port (probes, /metrics,
qmgr's admin API) from the namespace and networkPolicy.httpFrom.
Pass (dict "root" $ "role" ROLE
      "ingress" LIST_OF_INGRESS_RULES   the role's own ingress rules
      "openEgress" BOOL)                true: egress anywhere, always
*/}}
{{- define "postfleet.networkPolicy" -}}
{{- $root := .root }}
{{- $np := $root.Values.networkPolicy }}
{{- $ctx := dict "root" $root "role" .role }}
{{- $restrict := and $np.restrictEgress (not .openEgress) }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "postfleet.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "postfleet.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "postfleet.selectorLabels" $ctx | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - from:
        - podSelector: {}
        {{- with $np.httpFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - port: http
          protocol: TCP
    {{- with .ingress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  egress:
  {{- if $restrict }}
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    - to:
        - podSelector: {}
        {{- with $np.egressTo }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  {{- else }}
    - {}
  {{- end }}
{{- end }}
