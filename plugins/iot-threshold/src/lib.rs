//! `iot-threshold`: MQTT device telemetry → threshold alerts.
//!
//! Input: `{"device":"d-17","metric":"temp","value":81.5}` on `devices/<id>/telemetry`.
//! Output: nothing while `value <= threshold`; above it, one alert
//! `{"device":"d-17","metric":"temp","value":81.5,"threshold":80}` keyed by the device, to
//! topic `alerts/<device>`, plus (config `command = "true"`) a command to the device on the
//! named sink `commands`, topic `devices/<device>/commands`: `{"action":"throttle"}`.
//! Telemetry that is not such JSON is `Fatal` (dead-lettered with the cause).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sluice_guest::{Config, HandlerError, Message, Output, config, export_handler};

/// The threshold as f64 bits (statics must be `Sync`).
static THRESHOLD: AtomicU64 = AtomicU64::new(0);
static COMMANDS: AtomicBool = AtomicBool::new(false);

fn init(cfg: Config) -> Result<(), String> {
    let t: f64 = config::parse_or(&cfg, "threshold", 80.0)?;
    THRESHOLD.store(t.to_bits(), Ordering::Relaxed);
    COMMANDS.store(config::parse_or(&cfg, "command", false)?, Ordering::Relaxed);
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let v: serde_json::Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| HandlerError::Fatal(format!("telemetry is not JSON: {e}")))?;
    let device = v["device"]
        .as_str()
        .ok_or_else(|| HandlerError::Fatal("telemetry has no string `device`".into()))?;
    let value = v["value"]
        .as_f64()
        .ok_or_else(|| HandlerError::Fatal("telemetry has no numeric `value`".into()))?;
    let metric = v["metric"].as_str().unwrap_or("value");
    let threshold = f64::from_bits(THRESHOLD.load(Ordering::Relaxed));
    if value <= threshold {
        return Ok(Vec::new());
    }
    let alert = serde_json::json!({"device": device, "metric": metric, "value": value, "threshold": threshold});
    let mut out = vec![
        Output::new(alert.to_string())
            .with_key(device)
            .with_topic(format!("alerts/{device}")),
    ];
    if COMMANDS.load(Ordering::Relaxed) {
        out.push(
            Output::new(r#"{"action":"throttle"}"#)
                .to_sink("commands")
                .with_topic(format!("devices/{device}/commands")),
        );
    }
    Ok(out)
}

export_handler!(handle, init = init);
