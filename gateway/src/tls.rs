//! TLS for the one listener (`--tls-cert`, `--tls-key`): rustls with the `ring` provider,
//! ALPN `h2` then `http/1.1`, the certificate reloadable while connections stay open.
//!
//! A reload (SIGHUP, or [`Tls::reload`]) reads both files again and swaps the server
//! configuration new handshakes use; connections already open keep the session they have.
//! A reload that fails (a missing file, a key that does not match) keeps the current
//! certificate and says why.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpStream;

/// The server's certificate and key files, and the configuration built from them.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Loads the PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let config = server_config(cert, key)?;
        Ok(Tls { cert: cert.to_path_buf(), key: key.to_path_buf(), config: ArcSwap::new(config) })
    }

    /// Reads the files again; new handshakes use them, open connections are untouched.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.config.store(server_config(&self.cert, &self.key)?);
        Ok(())
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading the certificate chain {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    // ring, not aws-lc-rs (rustls' default): it builds with a plain C compiler, where
    // aws-lc wants cmake. What it lacks is the post-quantum hybrid key exchange
    // (X25519MLKEM768), hence the deprecation; classical X25519 and P-256 remain.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and the key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A non-blocking socket as `std::io` for rustls' `read_tls`/`write_tls`: `WouldBlock`
/// when the socket has nothing to read or no room.
pub struct SocketIo<'a>(pub &'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.cert.pem()).expect("write");
        std::fs::write(&k, cert.key_pair.serialize_pem()).expect("write");
        (c, k)
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_certificate_when_the_new_one_is_bad() {
        let dir = std::env::temp_dir().join(format!("tickgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (a_cert, a_key) = write_pair(&dir, "a");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::copy(&a_cert, &cert).expect("copy");
        std::fs::copy(&a_key, &key).expect("copy");
        let tls = Tls::load(&cert, &key).expect("loads");
        let first = tls.config.load_full();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        // A new pair in the same files: new handshakes get it.
        let (c2, k2) = write_pair(&dir, "b");
        std::fs::copy(&c2, &cert).expect("copy");
        std::fs::copy(&k2, &key).expect("copy");
        tls.reload().expect("reloads");
        assert!(!Arc::ptr_eq(&first, &tls.config.load_full()));
        // A key that is not the certificate's: refused, the current one stays.
        let current = tls.config.load_full();
        std::fs::copy(&a_key, &key).expect("copy");
        let e = tls.reload().expect_err("mismatched pair");
        assert!(format!("{e:#}").contains("do not go together"), "{e:#}");
        assert!(Arc::ptr_eq(&current, &tls.config.load_full()));
        std::fs::remove_file(&cert).expect("rm");
        assert!(tls.reload().is_err(), "a missing file is an error");
        assert!(Tls::load(&dir.join("none.crt"), &key).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
