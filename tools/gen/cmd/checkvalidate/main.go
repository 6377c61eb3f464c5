// Command checkvalidate verifies that the local copy of buf/validate/validate.proto
// (proto/third_party/protovalidate) describes exactly the schema compiled into
// the protovalidate Go module that the platform validates with at run time.
//
// The buf schema registry is unreachable from build machines, so the .proto is
// vendored; this check keeps the copy honest. Usage:
//
//	buf build proto/third_party/protovalidate --exclude-source-info -o image.binpb
//	checkvalidate image.binpb
package main

import (
	"fmt"
	"os"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "checkvalidate:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: checkvalidate image.binpb")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		return fmt.Errorf("decode image: %w", err)
	}
	want := protodesc.ToFileDescriptorProto(validate.File_buf_validate_validate_proto)
	want.SourceCodeInfo = nil
	for _, f := range set.GetFile() {
		if f.GetName() != want.GetName() {
			continue
		}
		f.SourceCodeInfo = nil
		// buf records image metadata (import flags) as an unknown field of
		// its own; it is not part of the schema.
		f.ProtoReflect().SetUnknown(nil)
		if !proto.Equal(f, want) {
			return fmt.Errorf("%s differs from the descriptor in the protovalidate Go module; copy the matching release", f.GetName())
		}
		fmt.Println("checkvalidate:", f.GetName(), "matches the protovalidate Go module")
		return nil
	}
	return fmt.Errorf("%s not found in image", want.GetName())
}
