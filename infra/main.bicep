// legato on Azure Container Apps, for `azd up`: a resource group named
// after the azd environment, and everything in it (resources.bicep).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('The azd environment\'s name; the resource group and tags derive from it.')
param environmentName string

@minLength(1)
@description('Region of every resource.')
param location string

// Set by azd once a service has been deployed, so re-provisioning keeps
// its image (SERVICE_<NAME>_RESOURCE_EXISTS).
param gatewayExists bool = false
param orchestratorExists bool = false
param notifierExists bool = false
param agentEchoExists bool = false
param agentPlannerExists bool = false
param agentCoderExists bool = false
param agentDataExists bool = false
param agentApprovalExists bool = false

@description('Most replicas an agent scales out to on its backlog.')
param agentMaxReplicas int = 10

@description('The Entra ID tenant whose tokens the gateway accepts (default: the subscription\'s).')
param authTenantId string = tenant().tenantId

@minLength(1)
@description('The audience of the gateway\'s tokens: its app registration\'s application id or id URI (azd env set LEGATO_AUTH_AUDIENCE …).')
param authAudience string

var tags = {
  'azd-env-name': environmentName
}
var token = toLower(uniqueString(subscription().id, environmentName, location))

resource group 'Microsoft.Resources/resourceGroups@2022-09-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module resources 'resources.bicep' = {
  name: 'resources'
  scope: group
  params: {
    location: location
    tags: tags
    token: token
    gatewayExists: gatewayExists
    orchestratorExists: orchestratorExists
    notifierExists: notifierExists
    agentEchoExists: agentEchoExists
    agentPlannerExists: agentPlannerExists
    agentCoderExists: agentCoderExists
    agentDataExists: agentDataExists
    agentApprovalExists: agentApprovalExists
    agentMaxReplicas: agentMaxReplicas
    authTenantId: authTenantId
    authAudience: authAudience
  }
}

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = group.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = resources.outputs.registryServer
output GATEWAY_URL string = resources.outputs.gatewayUrl
output NOTIFIER_URL string = resources.outputs.notifierUrl
output SERVICEBUS_NAMESPACE string = resources.outputs.servicebusHost
output STORAGE_ACCOUNT string = resources.outputs.storageAccount
output SIGNALR_ENDPOINT string = resources.outputs.signalrEndpoint
output AZURE_IDENTITY_CLIENT_ID string = resources.outputs.identityClientId
