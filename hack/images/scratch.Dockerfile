# A static Go program (CoreDNS, metrics-server) and nothing else: no shell, no package manager.
FROM scratch
COPY app /app
USER 65532:65532
ENTRYPOINT ["/app"]
