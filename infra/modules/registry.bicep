// The registry azd builds the image into (remote build: no local Docker);
// the apps pull with the identity (AcrPull), never with admin keys.

param name string
param location string
param tags object = {}
param pullPrincipalId string

var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139: private networking needs Premium and a virtual network the environment does not have; pulls are by identity only, admin and anonymous pulls are off
  // checkov:skip=CKV_AZURE_163: image scanning is Defender for Containers, a subscription-level choice outside this template
  // checkov:skip=CKV_AZURE_166: quarantine needs Premium; the images are built from this repository by the registry itself
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullPrincipalId, acrPull)
  scope: registry
  properties: {
    principalId: pullPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
