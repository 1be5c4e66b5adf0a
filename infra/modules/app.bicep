// One legato service as a container app: the one image, `legato run
// <service>`, the shared identity for the registry, the bus, the store and
// SignalR, HTTP probes on the service's own health endpoints, and, for an
// agent, a KEDA scale rule on its subscription's backlog authenticated by
// the identity (no secret anywhere).

param name string
param location string
param tags object = {}
@description('The azd service this app deploys (azure.yaml).')
param serviceName string
param environmentId string
param identityId string
param registryServer string
@description('Whether the app exists already: its deployed image is kept.')
param exists bool = false
@description('Arguments to the image\'s `legato` entry point.')
param args array
@description('Environment variables: [{name, value}].')
param env array
param port int
@description('Serve HTTP(S) to the internet (gateway, notifier).')
param external bool = false
param minReplicas int = 1
param maxReplicas int = 3
@description('An agent\'s subscription of `agent-tasks`: scale on its backlog (from zero).')
param scaleSubscription string = ''
@description('The Service Bus namespace name the scale rule reads.')
param serviceBusNamespace string = ''
@description('Backlog per replica the scale rule aims for.')
param messagesPerReplica int = 5

resource existingApp 'Microsoft.App/containerApps@2025-01-01' existing = if (exists) {
  name: name
}

// Until azd deploys the image, a placeholder runs, without legato's probes.
var placeholder = 'mcr.microsoft.com/azuredocs/containerapps-helloworld:latest'
var image = exists ? existingApp.properties.template.containers[0].image : placeholder
var probes = [
  {
    type: 'Liveness'
    httpGet: {
      path: '/healthz'
      port: port
    }
    periodSeconds: 10
    failureThreshold: 3
  }
  {
    type: 'Readiness'
    httpGet: {
      path: '/readyz'
      port: port
    }
    periodSeconds: 5
    failureThreshold: 3
  }
]

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    managedEnvironmentId: environmentId
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: external ? {
        external: true
        targetPort: port
        transport: 'auto'
        allowInsecure: false
      } : null
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: serviceName
          image: image
          args: exists ? args : []
          env: env
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          probes: exists ? probes : []
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: empty(scaleSubscription) ? [] : [
          {
            name: 'backlog'
            custom: {
              type: 'azure-servicebus'
              metadata: {
                namespace: serviceBusNamespace
                topicName: 'agent-tasks'
                subscriptionName: scaleSubscription
                messageCount: string(messagesPerReplica)
              }
              identity: identityId
            }
          }
        ]
      }
    }
  }
}

output name string = app.name
output url string = external ? 'https://${app.properties.configuration.ingress.fqdn}' : ''
