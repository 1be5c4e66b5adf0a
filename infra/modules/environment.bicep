// The Container Apps environment. Its logs go through Azure Monitor: a
// diagnostic setting sends the apps' console and system logs to the Log
// Analytics workspace, so the environment never holds the workspace's
// shared key (the `log-analytics` destination needs it).

param name string
param location string
param tags object = {}
param workspaceName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource environment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
  }
}

// Resource-specific tables (ContainerAppConsoleLogs, ContainerAppSystemLogs),
// which `azd monitor --logs` and the queries in docs/operations.md read.
resource logs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-workspace'
  scope: environment
  properties: {
    workspaceId: workspace.id
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'ContainerAppConsoleLogs'
        enabled: true
      }
      {
        category: 'ContainerAppSystemLogs'
        enabled: true
      }
    ]
  }
}

output id string = environment.id
output name string = environment.name
output defaultDomain string = environment.properties.defaultDomain
