// Package envd holds the Go code generated from E2B's envd protocol definitions (spec/process and
// spec/filesystem, Apache-2.0, see NOTICE): the messages and the connect-rpc service interfaces that
// internal/e2b serves as the sandbox's envd. The generated code is committed, so building needs
// neither protoc nor the plugins; regenerate with `go generate ./internal/e2b/envd` after installing
// protoc (Debian protobuf-compiler), protoc-gen-go and protoc-gen-connect-go.
package envd

//go:generate protoc -I spec --go_out=. --go_opt=module=github.com/entersandbox/agentbox/internal/e2b/envd --go_opt=Mprocess/process.proto=github.com/entersandbox/agentbox/internal/e2b/envd/process --go_opt=Mfilesystem/filesystem.proto=github.com/entersandbox/agentbox/internal/e2b/envd/filesystem --connect-go_out=. --connect-go_opt=module=github.com/entersandbox/agentbox/internal/e2b/envd --connect-go_opt=Mprocess/process.proto=github.com/entersandbox/agentbox/internal/e2b/envd/process --connect-go_opt=Mfilesystem/filesystem.proto=github.com/entersandbox/agentbox/internal/e2b/envd/filesystem process/process.proto filesystem/filesystem.proto
