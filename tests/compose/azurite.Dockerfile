# A stand-in for `mcr.microsoft.com/azure-storage/azurite`, which cannot be
# pulled on the test machines: Azurite 3.35.0 as tests/node's lock file
# pins it (scripts/test installs it there; it is the build context), on
# Debian's Node.js, with `azurite` on the PATH as in the official image.
# Built by scripts/check-compose under the official image's name.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY node_modules /opt/azurite/node_modules
RUN printf '#!/bin/sh\nexec node /opt/azurite/node_modules/azurite/dist/src/azurite.js "$@"\n' \
       > /usr/local/bin/azurite \
    && chmod 755 /usr/local/bin/azurite
EXPOSE 10000 10001 10002
CMD ["azurite", "--blobHost", "0.0.0.0", "--queueHost", "0.0.0.0", "--tableHost", "0.0.0.0", "--location", "/data"]
