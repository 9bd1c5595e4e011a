{{/* Chart name (nameOverride wins). */}}
{{- define "driftloop-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: fullnameOverride, else the release name (release ml-api -> ml-api). */}}
{{- define "driftloop-serving.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* name-version for the helm.sh/chart label. */}}
{{- define "driftloop-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "driftloop-serving.labels" -}}
helm.sh/chart: {{ include "driftloop-serving.chart" . }}
{{ include "driftloop-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: serving
app.kubernetes.io/part-of: driftloop
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods (never change them in an upgrade: selectors are immutable). */}}
{{- define "driftloop-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftloop-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "driftloop-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftloop-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "driftloop-serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
More than one pod can run: the PodDisruptionBudget (minAvailable) then never blocks a node drain
on its own. Renders "true" or nothing.
*/}}
{{- define "driftloop-serving.multiReplica" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* Paths inside the container: the root filesystem is read-only, these are emptyDirs. */}}
{{- define "driftloop-serving.stateDir" -}}/var/lib/serving{{- end }}
{{- define "driftloop-serving.metricsDir" -}}/var/lib/serving-metrics{{- end }}

{{/*
A values entry as a ConfigMap string. Helm reads numbers of values files as float64, which print
as 1.048576e+06: whole numbers are printed as integers.
*/}}
{{- define "driftloop-serving.envValue" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . | toString | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}
