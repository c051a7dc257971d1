{{- define "xlgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "xlgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "xlgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xlgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "xlgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "xlgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "xlgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "xlgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "xlgate.image" -}}
{{- $variant := ternary "cuda" "cpu" .Values.gpu.enabled -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag) -}}
{{- end -}}

{{/* Seconds: the preStop pause, the drain timeout rounded up, and a margin for finalising the last streams. */}}
{{- define "xlgate.terminationGracePeriodSeconds" -}}
{{- $drainMs := required "config.drain_timeout_ms is required" .Values.config.drain_timeout_ms -}}
{{- add (int .Values.preStopSleepSeconds) (divf $drainMs 1000 | ceil | int) (int .Values.terminationGraceExtraSeconds) -}}
{{- end -}}
