// Log Analytics: where the Container Apps environment sends every app's
// console output (legato logs JSON lines there).

param name string
param location string
param tags object = {}
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

output name string = workspace.name
output id string = workspace.id
