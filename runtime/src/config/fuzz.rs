//! A bounded fuzz of the pipeline reader: the shipped pipeline files,
//! mutated thousands of times (lines dropped, doubled, cut, bytes flipped,
//! odd values and secrets put in), through `parse`. It must never panic,
//! every problem must say what is wrong, and no secret may be echoed.

use std::path::Path;

use super::parse;

const SHIPPED: [&str; 4] = [
    include_str!("../../../pipelines/quickstart.toml"),
    include_str!("../../../pipelines/kafka-log-aggregation.toml"),
    include_str!("../../../pipelines/mqtt-device-fleet.toml"),
    include_str!("../../../pipelines/nats-quote-service.toml"),
];

/// What no error message may contain: it is only ever written as a secret.
const SECRET: &str = "S3CRET";

/// Values that have broken readers: empty, negative, huge, non-finite,
/// absurd units, tables and arrays where a scalar goes, control characters.
const ODD: [&str; 16] = [
    "\"\"",
    "-1",
    "0",
    "18446744073709551615",
    "1e309",
    "nan",
    "\"300000000000y\"",
    "\"99999999999999999999TiB\"",
    "{}",
    "[]",
    "[[[[[[[[[[]]]]]]]]]]",
    "\"\\u0000\"",
    "true",
    "\"a\\nb\"",
    "{ env = \"A\", file = \"b\" }",
    "\"../../../../../../etc/passwd\"",
];

/// Lines that start tables or set keys the file may not have had.
const EXTRA: [&str; 10] = [
    "[sinks.x]",
    "type = \"kafka\"",
    "[dedup]",
    "[circuit_breaker]",
    "[[x]]",
    "a.b.c.d.e = 1",
    "options = { \"sasl.password\" = \"S3CRET-opt\" }",
    "password = \"S3CRET-literal\"",
    "url = \"nats://user:S3CRET-url@127.0.0.1:4222\"",
    "token = \"S3CRET-token\"",
];

/// A small deterministic generator (xorshift64*): the same cases every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// `text` with one mutation.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let at = rng.below(lines.len());
    match rng.below(7) {
        0 => {
            lines.remove(at);
        }
        1 => {
            let l = lines[at].clone();
            lines.insert(at, l);
        }
        2 => lines.insert(at, EXTRA[rng.below(EXTRA.len())].to_string()),
        3 => {
            if let Some((key, _)) = lines[at].split_once('=') {
                let k = key.trim();
                let value = if k.contains("password") || k == "token" {
                    format!("\"{SECRET}-value\"")
                } else if k == "url" {
                    format!("\"mqtt://u:{SECRET}-url@127.0.0.1:1883\"")
                } else {
                    ODD[rng.below(ODD.len())].to_string()
                };
                lines[at] = format!("{key}= {value}");
            }
        }
        4 => {
            let cut = rng.below(text.len());
            return text.get(..cut).unwrap_or(text).to_string();
        }
        5 => {
            let mut bytes = lines[at].clone().into_bytes();
            if !bytes.is_empty() {
                let i = rng.below(bytes.len());
                let alphabet = b"=[]{}\".#\\ \t\x00x9";
                bytes[i] = alphabet[rng.below(alphabet.len())];
            }
            lines[at] = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => {
            let other = rng.below(lines.len());
            lines.swap(at, other);
        }
    }
    lines.join("\n") + "\n"
}

/// 4,000 cases from a fixed seed; `SLUICE_FUZZ_SEED` and
/// `SLUICE_FUZZ_ROUNDS` run others (a longer search by hand).
#[test]
fn mutated_pipeline_files_never_panic_and_never_echo_a_secret() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut rng = Rng(env("SLUICE_FUZZ_SEED").unwrap_or(0x5eed_1234_abcd_ef01) | 1);
    let rounds = env("SLUICE_FUZZ_ROUNDS").unwrap_or(4000) as usize;
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..rounds {
        let base = SHIPPED[round % SHIPPED.len()];
        let mut text = base.to_string();
        for _ in 0..=rng.below(3) {
            text = mutate(&text, &mut rng);
        }
        let result = std::panic::catch_unwind(|| parse(Path::new("p.toml"), &text));
        let Ok(result) = result else {
            panic!("parse panicked on:\n{text}");
        };
        match result {
            Ok(_) => valid += 1,
            Err(e) => {
                invalid += 1;
                assert!(!e.errors.is_empty(), "an error without a problem:\n{text}");
                let shown = e.to_string();
                assert!(
                    !shown.contains(SECRET),
                    "a secret echoed: {shown}\n---\n{text}"
                );
                assert!(shown.len() < 16 * 1024, "{} bytes of errors", shown.len());
                for p in &e.errors {
                    assert!(!p.message.trim().is_empty(), "an empty message:\n{text}");
                }
            }
        }
    }
    // The mutations must reach both sides, or the test shows nothing.
    println!("{rounds} mutated files: {valid} valid, {invalid} refused");
    assert!(
        valid > rounds / 40 && invalid > rounds / 4,
        "valid {valid}, invalid {invalid}"
    );
}
