// Azure Service Bus for legato: a Standard namespace with local (shared
// key) auth disabled, and every topic, subscription and rule the services
// use, read from ../servicebus-entities.json (the output of
// `legato topology --output infra`; a test keeps it equal to the code's).
// The apps' identity sends and receives everywhere and manages only the
// topics where replicas make their own subscriptions (notifier feeds,
// agent cancellations), which is also where the agents' KEDA scalers read
// their backlog.

@description('Namespace name (globally unique).')
param name string
param location string
param tags object = {}
@description('Principal (object) id of the apps\' user-assigned identity.')
param principalId string

var entities = loadJsonContent('../servicebus-entities.json')
var dataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var dataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var dataOwner = '090c5cfd-751d-490a-894a-3ce6f1109419'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource topics 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = [for topic in entities.topics: {
  parent: namespace
  name: topic.name
  properties: {
    requiresDuplicateDetection: topic.requiresDuplicateDetection
    duplicateDetectionHistoryTimeWindow: topic.duplicateDetectionHistoryTimeWindow
    maxSizeInMegabytes: 1024
  }
}]

resource subscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [for sub in entities.subscriptions: {
  name: '${namespace.name}/${sub.topic}/${sub.name}'
  properties: {
    lockDuration: sub.lockDuration
    maxDeliveryCount: sub.maxDeliveryCount
    deadLetteringOnMessageExpiration: true
  }
  dependsOn: [
    topics
  ]
}]

resource rules 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [for rule in entities.rules: {
  name: '${namespace.name}/${rule.topic}/${rule.subscription}/${rule.name}'
  properties: rule.filterType == 'CorrelationFilter' ? {
    filterType: 'CorrelationFilter'
    correlationFilter: rule.correlationFilter
  } : {
    filterType: 'SqlFilter'
    sqlFilter: rule.sqlFilter
  }
  dependsOn: [
    subscriptions
  ]
}]

resource sender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace.id, principalId, dataSender)
  scope: namespace
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSender)
  }
}

resource receiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace.id, principalId, dataReceiver)
  scope: namespace
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiver)
  }
}

resource replicaTopics 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' existing = [for topic in entities.replicaSubscriptionTopics: {
  parent: namespace
  name: topic
}]

resource owners 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (topic, i) in entities.replicaSubscriptionTopics: {
  name: guid(namespace.id, topic, principalId, dataOwner)
  scope: replicaTopics[i]
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataOwner)
  }
  dependsOn: [
    topics
  ]
}]

output name string = namespace.name
output host string = '${namespace.name}.servicebus.windows.net'
output id string = namespace.id
