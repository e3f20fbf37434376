//! `order-quote`: a NATS request/reply microservice.
//!
//! Request `{"sku":"A-113","qty":3}` → reply `{"sku":"A-113","qty":3,"unit":4.5,"total":13.5}`
//! (unit prices from config `prices = "A-113:4.5,B-2:10"`). An unknown SKU or a bad request is
//! `Fatal` (the caller gets the pipeline's fallback or an error reply naming the class);
//! config `slow_sku` names a SKU whose quote loops forever, to show the timeout fallback.
use std::collections::BTreeMap;
use std::sync::Mutex;

use sluice_guest::{Config, HandlerError, Message, Output, export_handler};

static PRICES: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());
static SLOW: Mutex<String> = Mutex::new(String::new());

fn init(cfg: Config) -> Result<(), String> {
    let mut prices = PRICES.lock().map_err(|e| e.to_string())?;
    for pair in cfg.get("prices").map(String::as_str).unwrap_or("A-113:4.5").split(',') {
        let (sku, price) = pair
            .split_once(':')
            .ok_or_else(|| format!("config `prices`: expected SKU:PRICE, found {pair:?}"))?;
        let price: f64 = price
            .trim()
            .parse()
            .map_err(|e| format!("config `prices`: bad price for {sku}: {e}"))?;
        prices.insert(sku.trim().to_string(), price);
    }
    *SLOW.lock().map_err(|e| e.to_string())? = cfg.get("slow_sku").cloned().unwrap_or_default();
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let req: serde_json::Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| HandlerError::Fatal(format!("request is not JSON: {e}")))?;
    let sku = req["sku"].as_str().ok_or_else(|| HandlerError::Fatal("request has no `sku`".into()))?;
    let qty = req["qty"].as_u64().unwrap_or(1);
    if SLOW.lock().is_ok_and(|s| !s.is_empty() && *s == sku) {
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    let unit = PRICES
        .lock()
        .ok()
        .and_then(|p| p.get(sku).copied())
        .ok_or_else(|| HandlerError::Fatal(format!("unknown sku {sku:?}")))?;
    let reply = serde_json::json!({"sku": sku, "qty": qty, "unit": unit, "total": unit * qty as f64});
    Ok(vec![Output::new(reply.to_string())])
}

export_handler!(handle, init = init);
