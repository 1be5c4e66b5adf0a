// The user-assigned identity every app runs as. User-assigned, not
// system-assigned: it exists before the apps, so it can pull their first
// image and authenticate their scale rules.

param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
