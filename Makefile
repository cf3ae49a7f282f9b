# Thin entry points; the logic is in scripts/ so that CI, the GitHub workflows and people run the same.
export GOTOOLCHAIN := go1.27.3

.PHONY: build test release docs image vulncheck clean

build:
	go build -trimpath -o bin/agentbox ./cmd/agentbox

test:
	bash scripts/test.sh

release:
	bash scripts/release.sh

docs:
	bash scripts/docs.sh

# The server's container image with the heavy tier (docs/container-image.md): the linux/amd64 part of
# the bundle and dist/agentbox-image-<version>.tar. `make release` with it: bash scripts/release.sh --image
image:
	RELEASE_TARGETS=linux/amd64 bash scripts/release.sh --image

vulncheck:
	bash scripts/vulncheck.sh

clean:
	rm -rf dist bin
