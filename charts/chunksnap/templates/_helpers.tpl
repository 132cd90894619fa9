{{- define "chunksnap.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chunksnap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chunksnap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chunksnap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chunksnap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "chunksnap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "chunksnap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chunksnap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chunksnap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Namespaces whose pull secrets are watched (a list, as JSON). */}}
{{- define "chunksnap.pullSecretNamespaces" -}}
{{- if .Values.pullSecrets.namespaces -}}
{{- toJson .Values.pullSecrets.namespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Host file the pod writes pull-secret credentials to (tmpfs). */}}
{{- define "chunksnap.pullSecretsFile" -}}
{{- printf "%s/pull-secrets.json" (dir .Values.socket) -}}
{{- end -}}
