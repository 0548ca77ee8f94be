use std::path::PathBuf;

fn main() {
    connectrpc_build::Config::new()
        .files(&[
            "../../proto/builder/feature/v1/feature.proto",
            "../../proto/builder/repository/v1/repository.proto",
        ])
        .includes(&["../../proto/"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("generating code from the .proto files (is protoc installed?)");

    // connectrpc-codegen 0.9 names its router extension method `register`, which shadows
    // the RPC `RepositoryService.Register` of our contract: the generated dispatch calls
    // `svc.register(ctx, req)` and method resolution picks the extension. Calling the
    // service trait explicitly keeps the contract's method name.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let path = out.join("builder.repository.v1.repository.__connect.rs");
    let code = std::fs::read_to_string(&path).expect("generated repository service code");
    let fixed = code.replace(
        "svc.register(ctx, ",
        "RepositoryService::register(&*svc, ctx, ",
    );
    assert_ne!(
        code, fixed,
        "the Register call shape changed: revisit this workaround"
    );
    std::fs::write(&path, fixed).expect("rewriting generated code");
}
