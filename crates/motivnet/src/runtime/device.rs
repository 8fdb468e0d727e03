//! Device selection from a user's string: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.

use candle_core::Device;

use crate::error::{Error, Result};

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::Device(format!("device '{spec}' is not valid: expected cpu, cuda or cuda:N")))?,
        None => return Err(Error::Device(format!("device '{spec}' is not valid: expected cpu, cuda or cuda:N"))),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Device(format!(
            "device '{spec}' asked for, but this build of motivnet has no CUDA support: rebuild with the \
             `cuda` feature (npm run build:cuda)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("device '{spec}': no usable CUDA GPU ({e})")))
}

/// The inverse of [`parse_device`], for reports and saved configs.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let err = parse_device("tpu:0").unwrap_err().to_string();
        assert!(err.contains("tpu:0") && err.contains("cuda:N"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:x"), "{err}");
        if !candle_core::utils::cuda_is_available() {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("no CUDA support"), "{err}");
        }
    }
}
