//! The GPU: adapter, device and queue, the adapter's own limits (not wgpu's conservative defaults),
//! and the optional features the kernels can use. Errors the device reports later (validation,
//! out of memory, device loss) are recorded instead of panicking, so a backend can notice them
//! and fall back to the CPU.

use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter is available ({0})")]
    NoAdapter(String),
    #[error("the GPU adapter refused a device: {0}")]
    Device(String),
    #[error("GPU error: {0}")]
    Runtime(String),
    #[error("{what} needs {need} bytes in one binding; this adapter allows {limit}")]
    TooLarge { what: String, need: u64, limit: u64 },
    #[error("{0}")]
    Shape(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// SHADER_F16 is enabled on the device.
    pub f16: bool,
    /// Subgroup operations are enabled on the device.
    pub subgroups: bool,
    /// The first error the device reported (uncaptured validation error, device lost).
    failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} / {:?}, f16 {}, subgroups {})", self.info.name, self.info.backend, self.f16, self.subgroups)
    }
}

impl Gpu {
    /// Requests an adapter and a device with the adapter's limits and the optional features it has.
    pub async fn new() -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        #[cfg(target_arch = "wasm32")]
        if !has_webgpu() {
            return Err(GpuError::NoAdapter("this JavaScript runtime has no WebGPU (navigator.gpu)".into()));
        }
        #[cfg(target_arch = "wasm32")]
        let desc = {
            let mut d = wgpu::InstanceDescriptor::new_without_display_handle();
            d.backends = wgpu::Backends::BROWSER_WEBGPU;
            d
        };
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("vigil"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let failure = Arc::new(Mutex::new(None::<String>));
        {
            let f = failure.clone();
            device.on_uncaptured_error(Arc::new(move |e| {
                f.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
            }));
            let f = failure.clone();
            device.set_device_lost_callback(move |reason, msg| {
                f.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
            });
        }
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            failure,
        })
    }

    /// [`Gpu::new`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// A short description: adapter, backend, device type.
    pub fn describe(&self) -> String {
        // browsers often hide the adapter's name
        let name = if self.info.name.is_empty() { "unnamed adapter" } else { &self.info.name };
        format!("{name} ({:?}, {:?})", self.info.backend, self.info.device_type)
    }

    /// The first error the device reported since it was created, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a failure (used by tests to simulate device loss).
    pub fn fail(&self, why: impl Into<String>) {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| why.into());
    }

    /// Largest single storage binding, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// A storage buffer holding `contents` (at least 4 bytes, so an empty tensor still binds).
    pub fn storage(&self, label: &str, contents: &[u8]) -> Result<wgpu::Buffer> {
        let size = contents.len().max(4).div_ceil(4) * 4;
        self.check_size(label, size as u64)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = buf.slice(..).get_mapped_range_mut().map_err(|e| GpuError::Runtime(e.to_string()))?;
            view.slice(..contents.len()).copy_from_slice(contents);
        }
        buf.unmap();
        Ok(buf)
    }

    /// A zeroed storage buffer of `size` bytes (at least 4).
    pub fn zeros(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).div_ceil(4) * 4;
        self.check_size(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding `value`.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(value);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.len().max(16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, bytes);
        buf
    }

    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        if size > self.max_binding() {
            return Err(GpuError::TooLarge { what: label.to_string(), need: size, limit: self.max_binding() });
        }
        Ok(())
    }

    /// Copies `bytes` bytes of `src` (from offset 0) back to the CPU, blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        self.map_read(&staging, bytes)
    }

    /// [`Gpu::map_read_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn map_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.map_read_async(staging, bytes))
    }

    /// Maps a MAP_READ buffer and copies its first `bytes` bytes out. Natively this waits on the
    /// device; in the browser the mapping resolves on the event loop, so this future must be
    /// awaited there (never blocked on).
    pub async fn map_read_async(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Runtime(e.to_string()))?;
        rx.await
            .map_err(|_| GpuError::Runtime(self.failure().unwrap_or_else(|| "the buffer mapping was dropped".into())))?
            .map_err(|e| GpuError::Runtime(format!("mapping a buffer failed: {e}")))?;
        let out = slice.get_mapped_range().map_err(|e| GpuError::Runtime(e.to_string()))?[..bytes as usize].to_vec();
        staging.unmap();
        if let Some(f) = self.failure() {
            return Err(GpuError::Runtime(f));
        }
        Ok(out)
    }

    /// f32 values of a buffer (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, src: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let b = self.read(src, (len * 4) as u64)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

/// Whether `navigator.gpu` exists (wgpu's WebGPU backend panics without it, e.g. in Node).
#[cfg(target_arch = "wasm32")]
fn has_webgpu() -> bool {
    let get = |v: &js_sys::wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).ok();
    get(&js_sys::global().into(), "navigator")
        .filter(|n| !n.is_undefined())
        .and_then(|n| get(&n, "gpu"))
        .is_some_and(|g| !g.is_undefined() && !g.is_null())
}

/// For tests that need a GPU adapter: one, or `None` after explaining the skip (a failure under
/// `VIGIL_STRICT=1`, where CI installs the lavapipe Vulkan driver).
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu_for_test() -> Option<Gpu> {
    match Gpu::new_blocking() {
        Ok(g) => Some(g),
        Err(e) => {
            let hint = format!("{e} — install a Vulkan driver (e.g. apt-get install mesa-vulkan-drivers)");
            if std::env::var("VIGIL_STRICT").is_ok_and(|v| v == "1") {
                panic!("{hint} (VIGIL_STRICT=1: missing test assets are failures)");
            }
            eprintln!("SKIPPED: {hint}");
            None
        }
    }
}
