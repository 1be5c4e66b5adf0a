// Azure SignalR Service in Serverless mode with local auth disabled: the
// notifier sends progress and the gateway gets client tokens through the
// REST API with the identity (SignalR REST API Owner).

param name string
param location string
param tags object = {}
param principalId string
@description('Standard_S1 for production; Free_F1 allows 20 connections.')
param sku string = 'Standard_S1'
@description('Browser origins allowed to connect to the service.')
param allowedOrigins array = [
  '*'
]

var restApiOwner = 'fd53cd77-2268-407a-8f46-7e7863d0f521'

resource signalr 'Microsoft.SignalRService/signalR@2024-03-01' = {
  name: name
  location: location
  tags: tags
  kind: 'SignalR'
  sku: {
    name: sku
    capacity: 1
  }
  properties: {
    features: [
      {
        flag: 'ServiceMode'
        value: 'Serverless'
      }
    ]
    cors: {
      allowedOrigins: allowedOrigins
    }
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    tls: {
      clientCertEnabled: false
    }
  }
}

resource owner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(signalr.id, principalId, restApiOwner)
  scope: signalr
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', restApiOwner)
  }
}

output name string = signalr.name
output endpoint string = 'https://${signalr.properties.hostName}'
