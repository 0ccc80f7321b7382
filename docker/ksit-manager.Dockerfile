# The kind demo's stand-in KSIT controller-manager (tests/ksit-manager), built by scripts/demo.sh
# from a static Go binary (CGO_ENABLED=0) and copied in, like the exporter's image: no pulls.
# The binary is named /ksit, as upstream's image names it.
FROM scratch
LABEL org.opencontainers.image.title="ksit-manager (stand-in, demo only)"
COPY manager /ksit
USER 65532:65532
ENTRYPOINT ["/ksit"]
