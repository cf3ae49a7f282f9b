# Thin entry points; the logic is in scripts/ so that CI, the GitHub workflows and people run the same.
export GOTOOLCHAIN := go1.27.3

.PHONY: build test release docs vulncheck clean

build:
	go build -trimpath -o bin/agentbox ./cmd/agentbox

test:
	bash scripts/test.sh

release:
	bash scripts/release.sh

docs:
	bash scripts/docs.sh

vulncheck:
	bash scripts/vulncheck.sh

clean:
	rm -rf dist bin
