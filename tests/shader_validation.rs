//! Every WGSL file under shaders/ parses and validates with naga (no GPU needed), and the
//! heatmap shader's uniform struct has the size the Rust mirror has.

use std::path::Path;

use egui_wgpu::wgpu::naga;

fn shaders() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    files.sort();
    files
}

fn validate(path: &Path) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = std::fs::read_to_string(path).unwrap();
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
    (module, info)
}

#[test]
fn every_shader_validates() {
    let files = shaders();
    assert!(!files.is_empty(), "no .wgsl files in shaders/");
    for f in files {
        validate(&f);
    }
}

#[test]
fn heatmap_uniforms_match_the_rust_mirror() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/heatmap.wgsl");
    let (module, _) = validate(&path);
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Uniforms"))
        .expect("struct Uniforms");
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("Uniforms is not a struct");
    };
    assert_eq!(*span as usize, moescope::render::gpu_data::UNIFORMS_SIZE);
    assert_eq!(
        std::mem::size_of::<moescope::render::gpu_data::HeatmapUniforms>(),
        *span as usize
    );
    let names: Vec<&str> = members.iter().filter_map(|m| m.name.as_deref()).collect();
    assert_eq!(
        names,
        [
            "origin_px",
            "cell_px",
            "first_cell",
            "dims",
            "hover",
            "range",
            "scale",
            "colormap",
            "grid",
            "_pad"
        ]
    );
    // Same offsets as #[repr(C)] fields in order.
    let offsets: Vec<u32> = members.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [0, 8, 16, 24, 32, 40, 48, 52, 56, 60]);
    // The shader must not use storage buffers (GL / WebGL2 downlevel limits).
    assert!(
        module
            .global_variables
            .iter()
            .all(|(_, g)| !matches!(g.space, naga::AddressSpace::Storage { .. })),
        "storage buffers are not available on the GL backend"
    );
}
