// Everything legato runs on, in one resource group: the identity, the
// registry, logs, Service Bus, Table Storage, Azure SignalR, the Container
// Apps environment and one app per service (as in docker-compose.yml).

param location string
param tags object
@description('Makes resource names unique per subscription, environment and region.')
param token string
param gatewayExists bool = false
param orchestratorExists bool = false
param notifierExists bool = false
param agentEchoExists bool = false
param agentPlannerExists bool = false
param agentCoderExists bool = false
param agentDataExists bool = false
param agentApprovalExists bool = false
param agentMaxReplicas int = 10
@description('The Entra ID tenant whose tokens the gateway accepts.')
param authTenantId string
@description('The audience of those tokens: the gateway API\'s application id or id URI.')
param authAudience string
@description('Backlog per agent replica the scale rule aims for.')
param messagesPerReplica int = 5

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-legato-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: 'log-legato-${token}'
    location: location
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    name: 'crlegato${token}'
    location: location
    tags: tags
    pullPrincipalId: identity.outputs.principalId
  }
}

module servicebus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    name: 'sb-legato-${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'stlegato${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module signalr 'modules/signalr.bicep' = {
  name: 'signalr'
  params: {
    name: 'sigr-legato-${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module environment 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    name: 'cae-legato-${token}'
    location: location
    tags: tags
    workspaceName: monitoring.outputs.name
  }
}

// The settings every service reads (docs/deploy.md lists them); each
// service ignores the sections it does not have.
var clientId = identity.outputs.clientId
var common = [
  {
    name: 'LEGATO__HTTP__HOST'
    value: '0.0.0.0'
  }
  {
    name: 'LEGATO__TELEMETRY__LOG_FORMAT'
    value: 'json'
  }
  {
    name: 'LEGATO__BUS__KIND'
    value: 'servicebus'
  }
  {
    name: 'LEGATO__BUS__NAMESPACE'
    value: servicebus.outputs.host
  }
  {
    name: 'LEGATO__BUS__CLIENT_ID'
    value: clientId
  }
  {
    name: 'LEGATO__BUS__MANAGE_ENTITIES'
    value: 'false'
  }
  {
    name: 'LEGATO__STORE__KIND'
    value: 'azure_table'
  }
  {
    name: 'LEGATO__STORE__ACCOUNT'
    value: storage.outputs.name
  }
  {
    name: 'LEGATO__STORE__CLIENT_ID'
    value: clientId
  }
  {
    name: 'LEGATO__SIGNALR__CONNECTION_STRING'
    value: 'Endpoint=${signalr.outputs.endpoint};AuthType=azure.msi;ClientId=${clientId};Version=1.0;'
  }
]

// An app's external address is <app name>.<environment domain>; the
// gateway's URIs must name its own and the notifier's.
var appSuffix = take(token, 10)
var services = [
  {
    name: 'gateway'
    port: 8080
    external: true
    agent: false
    exists: gatewayExists
    env: [
      {
        name: 'LEGATO__GATEWAY__WORKFLOWS_DIR'
        value: '/app/workflows'
      }
      {
        name: 'LEGATO__GATEWAY__PUBLIC_URL'
        value: 'https://ca-gateway-${appSuffix}.${environment.outputs.defaultDomain}'
      }
      {
        name: 'LEGATO__GATEWAY__STREAM_URL'
        value: 'https://ca-notifier-${appSuffix}.${environment.outputs.defaultDomain}'
      }
      {
        name: 'LEGATO__GATEWAY__AUTH__MODE'
        value: 'jwt'
      }
      {
        name: 'LEGATO__GATEWAY__AUTH__JWT__ISSUER'
        value: 'https://login.microsoftonline.com/${authTenantId}/v2.0'
      }
      {
        name: 'LEGATO__GATEWAY__AUTH__JWT__AUDIENCE'
        value: authAudience
      }
      {
        name: 'LEGATO__GATEWAY__AUTH__JWT__JWKS_URL'
        value: 'https://login.microsoftonline.com/${authTenantId}/discovery/v2.0/keys'
      }
    ]
  }
  {
    name: 'orchestrator'
    port: 8081
    external: false
    agent: false
    exists: orchestratorExists
    env: []
  }
  // The notifier's progress stream checks the same tokens as the gateway.
  {
    name: 'notifier'
    port: 8083
    external: true
    agent: false
    exists: notifierExists
    env: [
      {
        name: 'LEGATO__AUTH__MODE'
        value: 'jwt'
      }
      {
        name: 'LEGATO__AUTH__JWT__ISSUER'
        value: 'https://login.microsoftonline.com/${authTenantId}/v2.0'
      }
      {
        name: 'LEGATO__AUTH__JWT__AUDIENCE'
        value: authAudience
      }
      {
        name: 'LEGATO__AUTH__JWT__JWKS_URL'
        value: 'https://login.microsoftonline.com/${authTenantId}/discovery/v2.0/keys'
      }
    ]
  }
  {
    name: 'agent-echo'
    port: 8090
    external: false
    agent: true
    exists: agentEchoExists
    env: []
  }
  {
    name: 'agent-planner'
    port: 8091
    external: false
    agent: true
    exists: agentPlannerExists
    env: []
  }
  {
    name: 'agent-coder'
    port: 8092
    external: false
    agent: true
    exists: agentCoderExists
    env: []
  }
  {
    name: 'agent-data'
    port: 8093
    external: false
    agent: true
    exists: agentDataExists
    env: []
  }
  {
    name: 'agent-approval'
    port: 8094
    external: false
    agent: true
    exists: agentApprovalExists
    env: []
  }
]

module apps 'modules/app.bicep' = [for svc in services: {
  name: 'app-${svc.name}'
  params: {
    name: 'ca-${svc.name}-${appSuffix}'
    location: location
    tags: tags
    serviceName: svc.name
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    exists: svc.exists
    args: [
      'run'
      svc.name
    ]
    env: concat(common, svc.env, [
      {
        name: 'LEGATO__HTTP__PORT'
        value: string(svc.port)
      }
    ])
    port: svc.port
    external: svc.external
    minReplicas: svc.agent ? 0 : 1
    maxReplicas: svc.agent ? agentMaxReplicas : 3
    scaleSubscription: svc.agent ? svc.name : ''
    serviceBusNamespace: servicebus.outputs.name
    messagesPerReplica: messagesPerReplica
  }
}]

output registryServer string = registry.outputs.loginServer
output gatewayUrl string = apps[0].outputs.url
output notifierUrl string = apps[2].outputs.url
output servicebusHost string = servicebus.outputs.host
output storageAccount string = storage.outputs.name
output signalrEndpoint string = signalr.outputs.endpoint
output identityClientId string = clientId
