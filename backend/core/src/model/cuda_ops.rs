//! The CUDA forward passes of the fused ops in `ops.rs` (softmax, layer norm, RMS norm): one
//! launch of candle-kernels' row-wise kernels instead of a chain of elementary ops. Their backward
//! passes are the tensor-level ones in `ops.rs`, which run on any device. Compiled only with the
//! `cuda` feature; the kernel launches are FFI calls, hence the one `unsafe` outside `main.rs`.
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, Map1, Map2, Map3, WrapErr, kernel_name, kernels};
use candle_core::{Layout, Result, Shape, WithDType};

/// The contiguous part of `slice` that `layout` describes.
fn contiguous<'a, T>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `(rows, columns)` of a row-wise op over the last dimension.
fn rows_and_columns(layout: &Layout) -> (usize, usize) {
    let count = layout.shape().elem_count();
    let columns = layout.shape().dims().last().copied().unwrap_or(1).max(1);
    (count / columns, columns)
}

/// A launch over `rows` rows, one block per row, `threads` threads per block.
fn row_launch(rows: usize, threads: (u32, u32)) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads.0, threads.1, 1), shared_mem_bytes: 0 }
}

/// Threads per row for the norm kernels (one warp for short rows).
fn norm_block(columns: usize) -> u32 {
    if columns < 1024 { 32 } else { 1024 }
}

struct Softmax;

impl Map1 for Softmax {
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        dev: &CudaDevice,
        layout: &Layout,
    ) -> Result<CudaSlice<T>> {
        let src = contiguous(src, layout, "softmax input")?;
        let (rows, columns) = rows_and_columns(layout);
        let func = dev.get_or_load_func(&kernel_name::<T>("softmax"), &kernels::REDUCE)?;
        // SAFETY: every element is written by the kernel before anyone reads it.
        let dst = unsafe { dev.alloc::<T>(rows * columns)? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        let columns = columns as i32;
        builder.arg(&columns);
        // SAFETY: the arguments match the kernel's signature (src, dst, n_cols).
        unsafe { builder.launch(row_launch(rows, (1, 32))) }.w()?;
        Ok(dst)
    }
}

struct RmsNorm {
    eps: f32,
}

impl Map2 for RmsNorm {
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        layout: &Layout,
        weight: &CudaSlice<T>,
        weight_layout: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let src = contiguous(src, layout, "rms-norm input")?;
        let weight = contiguous(weight, weight_layout, "rms-norm weight")?;
        let (rows, columns) = rows_and_columns(layout);
        let block = norm_block(columns);
        let func = dev.get_or_load_func(&kernel_name::<T>("rmsnorm"), &kernels::REDUCE)?;
        // SAFETY: every element is written by the kernel before anyone reads it.
        let dst = unsafe { dev.alloc::<T>(rows * columns)? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        builder.arg(&weight);
        let (columns, block_size, eps) = (columns as i32, block as i32, self.eps);
        builder.arg(&columns);
        builder.arg(&block_size);
        builder.arg(&eps);
        // SAFETY: the arguments match the kernel's signature (src, dst, alpha, n_cols, block_size, eps).
        unsafe { builder.launch(row_launch(rows, (block, 1))) }.w()?;
        Ok(dst)
    }
}

struct LayerNorm {
    eps: f32,
}

impl Map3 for LayerNorm {
    #[allow(clippy::too_many_arguments)]
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        layout: &Layout,
        weight: &CudaSlice<T>,
        weight_layout: &Layout,
        bias: &CudaSlice<T>,
        bias_layout: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let src = contiguous(src, layout, "layer-norm input")?;
        let weight = contiguous(weight, weight_layout, "layer-norm weight")?;
        let bias = contiguous(bias, bias_layout, "layer-norm bias")?;
        let (rows, columns) = rows_and_columns(layout);
        let block = norm_block(columns);
        let func = dev.get_or_load_func(&kernel_name::<T>("layernorm"), &kernels::REDUCE)?;
        // SAFETY: every element is written by the kernel before anyone reads it.
        let dst = unsafe { dev.alloc::<T>(rows * columns)? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        builder.arg(&weight);
        builder.arg(&bias);
        let (columns, block_size, eps) = (columns as i32, block as i32, self.eps);
        builder.arg(&columns);
        builder.arg(&block_size);
        builder.arg(&eps);
        // SAFETY: the arguments match the kernel's signature (src, dst, alpha, beta, n_cols, block_size, eps).
        unsafe { builder.launch(row_launch(rows, (block, 1))) }.w()?;
        Ok(dst)
    }
}

pub fn softmax_last_dim(storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
    let device = storage.device.clone();
    let slice = Softmax.map(&storage.slice, &device, layout)?;
    Ok((CudaStorage { slice, device }, layout.shape().clone()))
}

pub fn rms_norm(
    xs: &CudaStorage,
    xs_layout: &Layout,
    weight: &CudaStorage,
    weight_layout: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let device = xs.device.clone();
    let slice = RmsNorm { eps: eps as f32 }.map(&xs.slice, xs_layout, &weight.slice, weight_layout, &device)?;
    Ok((CudaStorage { slice, device }, xs_layout.shape().clone()))
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    xs: &CudaStorage,
    xs_layout: &Layout,
    weight: &CudaStorage,
    weight_layout: &Layout,
    bias: &CudaStorage,
    bias_layout: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let device = xs.device.clone();
    let slice = LayerNorm { eps: eps as f32 }.map(
        &xs.slice,
        xs_layout,
        &weight.slice,
        weight_layout,
        &bias.slice,
        bias_layout,
        &device,
    )?;
    Ok((CudaStorage { slice, device }, xs_layout.shape().clone()))
}
