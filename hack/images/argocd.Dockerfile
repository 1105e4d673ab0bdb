# Argo CD, every component in one image, laid out as Argo CD's own (its Dockerfile's final stage):
# user argocd (uid 999) with HOME /home/argocd, the all-in-one binary at /usr/local/bin/argocd and each
# component as a symlink to it (the binary dispatches on argv[0]), its helper scripts beside it, the
# /app/config directories its manifests mount ConfigMaps and Secrets on, tini as PID 1.
# hack/build-images.sh builds it with no network: BASE is a Debian base debootstrapped with the
# packages Argo CD's image installs (git, openssh-client, gpg, gpg-agent, tini, ca-certificates,
# tzdata, connect-proxy) plus redis-server, so that the same image also runs Argo CD's Redis. The
# context holds what hack/build-argocd.sh put in $KILN_CACHE/argocd-vVERSION/bin: argocd and
# entrypoint.sh, gpg-wrapper.sh, git-verify-wrapper.sh from the Argo CD module.
# Not in it, unlike Argo CD's: helm, kustomize and git-lfs (the repo-server runs them only for Helm,
# Kustomize and LFS sources; plain directories of manifests need none), and the web UI (the Go module
# ships an empty ui/dist/app: argocd-server's API works, its web pages are empty).
ARG BASE
FROM ${BASE}

ENV ARGOCD_USER_ID=999
RUN groupadd -g $ARGOCD_USER_ID argocd && \
    useradd -r -u $ARGOCD_USER_ID -g argocd argocd && \
    mkdir -p /home/argocd && \
    chown argocd:0 /home/argocd && \
    chmod g=u /home/argocd

COPY entrypoint.sh gpg-wrapper.sh git-verify-wrapper.sh /usr/local/bin/
# Kept by Argo CD for backward compatibility.
RUN ln -s /usr/local/bin/entrypoint.sh /usr/local/bin/uid_entrypoint.sh

# Mount points for configuration from ConfigMaps (argocd-ssh-known-hosts-cm, argocd-tls-certs-cm,
# argocd-gpg-keys-cm); gpg/keys is the repo-server's GnuPG home.
WORKDIR /app/config/ssh
RUN touch ssh_known_hosts && \
    ln -s /app/config/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts
WORKDIR /app/config
RUN mkdir -p tls gpg/source gpg/keys && \
    chown argocd gpg/keys && \
    chmod 0700 gpg/keys

ENV USER=argocd
# As Argo CD's image: no DNS TXT lookups for gRPC service configs (_grpc_config.<host>).
ENV GRPC_ENABLE_TXT_SERVICE_CONFIG=false

# Last, so that a new Argo CD release rebuilds only these layers.
COPY argocd /usr/local/bin/argocd
RUN for c in argocd-server argocd-repo-server argocd-cmp-server argocd-application-controller \
      argocd-dex argocd-notifications argocd-applicationset-controller argocd-k8s-auth \
      argocd-commit-server; do \
      ln -s /usr/local/bin/argocd /usr/local/bin/$c; \
    done

USER $ARGOCD_USER_ID
WORKDIR /home/argocd
ENTRYPOINT ["/usr/bin/tini", "--"]
