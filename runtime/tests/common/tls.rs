//! A test CA made with `openssl` for brokers that serve TLS on private
//! ports: `ca.pem` signs `server.pem` (for 127.0.0.1, key `server.key`);
//! `other.pem` is an unrelated CA, which a client must refuse the server by.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test CA, in a temporary folder removed on drop.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    /// Makes the CA, the server certificate and the other CA.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for ca in ["ca", "other"] {
            let subj = format!("/CN=sluice test {ca}");
            let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
            openssl(
                d,
                &[
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
                    "-days", "2", "-subj", &subj,
                ],
            );
        }
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        TestCa { dir }
    }

    /// A file of the CA's folder (`ca.pem`, `server.pem`, `server.key`, `other.pem`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
