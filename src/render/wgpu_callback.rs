//! The wgpu paint callback: [`HeatmapRenderer`] keeps the pipeline of `shaders/heatmap.wgsl`
//! and per-widget textures in `egui_wgpu`'s callback resources (registered once with
//! [`HeatmapRenderer::register`]); each frame a heatmap adds a callback that uploads its values
//! (R32Float, only when they change), selection mask and uniforms, and draws one quad.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use egui::Rect;
use egui_wgpu::wgpu;

use crate::render::colormap::HeatmapStyle;
use crate::render::gpu_data::HeatmapUniforms;
use crate::render::layout::HeatmapLayout;
use crate::render::matrix::Matrix;

/// The heatmap shader's source.
pub const HEATMAP_WGSL: &str = include_str!("../../shaders/heatmap.wgsl");

/// The shader uniforms for a layout, style and hover cell.
pub(super) fn uniforms(
    l: &HeatmapLayout,
    style: &HeatmapStyle,
    hovered: Option<(usize, usize)>,
) -> HeatmapUniforms {
    let ppp = l.pixels_per_point;
    HeatmapUniforms {
        origin_px: [(l.rect.min.x * ppp).round(), (l.rect.min.y * ppp).round()],
        cell_px: [(l.cell.x * ppp).round(), (l.cell.y * ppp).round()],
        first_cell: [l.first.0 as i32, l.first.1 as i32],
        dims: [l.dims.0 as i32, l.dims.1 as i32],
        hover: hovered.map_or([-1, -1], |(r, c)| [c as i32, r as i32]),
        range: [style.range.0, style.range.1],
        scale: style.scale.as_u32(),
        colormap: style.colormap.as_u32(),
        grid: u32::from(l.cell.x * ppp >= 6.0 && l.cell.y * ppp >= 6.0),
        _pad: 0,
    }
}

/// The selection mask as texture bytes (255 = selected).
pub(super) fn visible_mask(m: &Matrix, selected: Option<&[bool]>) -> Vec<u8> {
    let n = m.rows * m.cols;
    match selected {
        Some(s) => (0..n)
            .map(|i| {
                if s.get(i).copied().unwrap_or(false) {
                    255
                } else {
                    0
                }
            })
            .collect(),
        None => vec![0; n],
    }
}

/// Pipeline and per-widget GPU resources, kept in `egui_wgpu`'s callback resources.
pub struct HeatmapRenderer {
    pipeline: wgpu::RenderPipeline,
    bind_group_layout: wgpu::BindGroupLayout,
    instances: HashMap<egui::Id, Instance>,
}

struct Instance {
    dims: (u32, u32),
    version: u64,
    uniforms: wgpu::Buffer,
    values: wgpu::Texture,
    mask: wgpu::Texture,
    bind_group: wgpu::BindGroup,
}

impl HeatmapRenderer {
    /// Builds the pipeline and stores it in the render state's callback resources.
    pub fn register(rs: &egui_wgpu::RenderState) {
        let renderer = Self::new(&rs.device, rs.target_format);
        rs.renderer.write().callback_resources.insert(renderer);
    }

    pub fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("moescope heatmap"),
            source: wgpu::ShaderSource::Wgsl(HEATMAP_WGSL.into()),
        });
        let texture_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: false },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("moescope heatmap"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: NonZeroU64::new(
                            std::mem::size_of::<HeatmapUniforms>() as u64
                        ),
                    },
                    count: None,
                },
                texture_entry(1),
                texture_entry(2),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("moescope heatmap"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("moescope heatmap"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                buffers: &[],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                targets: &[Some(target_format.into())],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            }),
            primitive: wgpu::PrimitiveState {
                topology: wgpu::PrimitiveTopology::TriangleStrip,
                ..Default::default()
            },
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        Self {
            pipeline,
            bind_group_layout,
            instances: HashMap::new(),
        }
    }

    fn instance(
        &mut self,
        device: &wgpu::Device,
        id: egui::Id,
        dims: (u32, u32),
    ) -> Option<&mut Instance> {
        let stale = self.instances.get(&id).is_none_or(|i| i.dims != dims);
        if stale {
            let texture = |format, label| {
                device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: dims.0.max(1),
                        height: dims.1.max(1),
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            };
            let values = texture(wgpu::TextureFormat::R32Float, "heatmap values");
            let mask = texture(wgpu::TextureFormat::R8Unorm, "heatmap selection");
            let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("heatmap uniforms"),
                size: std::mem::size_of::<HeatmapUniforms>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("heatmap"),
                layout: &self.bind_group_layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniforms.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(
                            &values.create_view(&Default::default()),
                        ),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(
                            &mask.create_view(&Default::default()),
                        ),
                    },
                ],
            });
            self.instances.insert(
                id,
                Instance {
                    dims,
                    version: 0,
                    uniforms,
                    values,
                    mask,
                    bind_group,
                },
            );
        }
        self.instances.get_mut(&id)
    }
}

/// One heatmap's draw: its values (uploaded when the version changes), selection mask and
/// uniforms.
pub(super) struct HeatmapCallback {
    pub(super) id: egui::Id,
    pub(super) values: Arc<Vec<f32>>,
    pub(super) version: u64,
    pub(super) mask: Vec<u8>,
    pub(super) dims: (u32, u32),
    pub(super) rect: Rect,
    pub(super) uniforms: HeatmapUniforms,
}

impl egui_wgpu::CallbackTrait for HeatmapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(renderer) = resources.get_mut::<HeatmapRenderer>() else {
            return Vec::new();
        };
        if self.dims.0 == 0 || self.dims.1 == 0 {
            return Vec::new();
        }
        let Some(inst) = renderer.instance(device, self.id, self.dims) else {
            return Vec::new();
        };
        let (w, h) = self.dims;
        let extent = wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        };
        if inst.version != self.version {
            queue.write_texture(
                inst.values.as_image_copy(),
                bytemuck::cast_slice(self.values.as_slice()),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(w * 4),
                    rows_per_image: Some(h),
                },
                extent,
            );
            inst.version = self.version;
        }
        queue.write_texture(
            inst.mask.as_image_copy(),
            &self.mask,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(w),
                rows_per_image: Some(h),
            },
            extent,
        );
        let ppp = screen.pixels_per_point;
        let mut u = self.uniforms;
        u.origin_px = [
            (self.rect.min.x * ppp).round(),
            (self.rect.min.y * ppp).round(),
        ];
        queue.write_buffer(&inst.uniforms, 0, bytemuck::bytes_of(&u));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(renderer) = resources.get::<HeatmapRenderer>() else {
            return;
        };
        let Some(inst) = renderer.instances.get(&self.id) else {
            return;
        };
        pass.set_pipeline(&renderer.pipeline);
        pass.set_bind_group(0, &inst.bind_group, &[]);
        pass.draw(0..4, 0..1);
    }
}
