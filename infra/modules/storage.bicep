// Table Storage for legato's durable state: shared-key access off (the
// apps use Entra ID tokens), HTTPS and TLS 1.2 only, and the three tables
// of the default prefix `legato`.

param name string
param location string
param tags object = {}
param principalId string
@description('Table prefix the services use (store.table_prefix).')
param tablePrefix string = 'legato'

var tableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the Container Apps environment has no virtual network here, so its apps reach the account over the public endpoint; Entra ID with shared keys off is the guard
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // Zones and a second region: instance state is the one thing not rebuilt.
    name: 'Standard_GZRS'
  }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource instances 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: '${tablePrefix}instances'
}

resource index 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: '${tablePrefix}index'
}

resource definitions 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: '${tablePrefix}definitions'
}

resource contributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, tableDataContributor)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tableDataContributor)
  }
}

output name string = account.name
output tableEndpoint string = account.properties.primaryEndpoints.table
