{{/* Names, labels and the checks values.schema.json cannot express. */}}

{{- define "moderator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moderator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "moderator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moderator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "moderator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "moderator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: moderation
{{- end -}}

{{- define "moderator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "moderator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "moderator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The policy ConfigMap the pods mount: an existing one, or the chart's. */}}
{{- define "moderator.policyConfigMap" -}}
{{- default (printf "%s-policies" (include "moderator.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end -}}

{{/* Kafka security protocol from the sasl/tls switches. */}}
{{- define "moderator.kafkaProtocol" -}}
{{- $k := .Values.kafka -}}
{{- if and $k.sasl.enabled $k.tls.enabled -}}SASL_SSL
{{- else if $k.sasl.enabled -}}SASL_PLAINTEXT
{{- else if $k.tls.enabled -}}SSL
{{- else -}}PLAINTEXT
{{- end -}}
{{- end -}}

{{/* KEDA's spelling of the SASL mechanism. */}}
{{- define "moderator.kedaSasl" -}}
{{- $m := .Values.kafka.sasl.mechanism -}}
{{- if eq $m "PLAIN" -}}plaintext
{{- else if eq $m "SCRAM-SHA-256" -}}scram_sha256
{{- else -}}scram_sha512
{{- end -}}
{{- end -}}

{{- define "moderator.kafkaCaPath" -}}
/etc/moderator/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end -}}

{{/*
Cross-field checks, run from the Deployment so every render goes through them. Each message says
what to change.
*/}}
{{- define "moderator.validate" -}}
{{- $v := .Values -}}
{{- $minGrace := add (int (ceil $v.drainTimeoutSeconds)) 5 -}}
{{- if lt (int $v.terminationGracePeriodSeconds) (int $minGrace) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least drainTimeoutSeconds + 5 = %v: the kubelet would SIGKILL pods mid-drain and their finished offsets would not be committed" $v.terminationGracePeriodSeconds $minGrace) -}}
{{- end -}}
{{- if and $v.kafka.sasl.enabled (not $v.kafka.sasl.existingSecret) -}}
{{- fail "kafka.sasl.enabled needs kafka.sasl.existingSecret: the name of a Secret holding the SASL user name and password" -}}
{{- end -}}
{{- if and $v.redis.enabled (not $v.redis.existingSecret) (contains "@" $v.redis.url) -}}
{{- fail "redis.url carries credentials: put the whole URL in a Secret and name it in redis.existingSecret (values and ConfigMaps are not for secrets)" -}}
{{- end -}}
{{- if and $v.policies.existingConfigMap $v.policies.files -}}
{{- fail "set either policies.files or policies.existingConfigMap, not both" -}}
{{- end -}}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
