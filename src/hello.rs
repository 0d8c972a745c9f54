//! The built-in `hello-world` image (`serve --hello-world`): made here, byte by
//! byte, so the quick start's "verify" step works on a machine with no
//! internet. One linux/amd64 layer holding `/hello`, a 200-byte static ELF
//! that prints a greeting and exits 0.
//!
//! Written by hand rather than with the `tar`/`flate2` crates: the whole image
//! is four small, fixed byte strings and the server needs neither crate otherwise.

use crate::cache::Seed;
use crate::oci::{Algorithm, Digest, RegistryHost, RepoName, Tag};

const GREETING: &str = "\nHello from ociregistry!\n\
This image was served by your pull-through mirror, with no upstream at all.\n\
If containerd printed this, the mirror is wired in correctly.\n\n";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `docker.io/library/hello-world:latest`, as `kubectl run hello-world --image hello-world` asks for.
pub fn image() -> Result<Seed, crate::oci::ParseError> {
    let layer = tar_one_file("hello", &elf_hello(GREETING.as_bytes()));
    let layer_digest = Digest::of(Algorithm::Sha256, &layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/hello"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let config_digest = Digest::of(Algorithm::Sha256, &config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    Ok(Seed {
        registry: RegistryHost::parse("docker.io")?,
        repo: RepoName::parse("library/hello-world")?,
        tag: Tag::parse("latest")?,
        blobs: vec![(layer_digest, layer), (config_digest, config)],
        manifest,
        media_type: OCI_MANIFEST,
    })
}

/// A minimal static x86-64 Linux executable: `write(1, msg, len); exit(0)`.
fn elf_hello(msg: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let code: [u8; 33] = {
        let len = (msg.len() as u32).to_le_bytes();
        [
            0xb8, 1, 0, 0, 0, // mov eax, 1 (write)
            0xbf, 1, 0, 0, 0, // mov edi, 1 (stdout)
            0x48, 0x8d, 0x35, 16, 0, 0, 0, // lea rsi, [rip+16] (the message, after the code)
            0xba, len[0], len[1], len[2], len[3], // mov edx, len
            0x0f, 0x05, // syscall
            0xb8, 60, 0, 0, 0, // mov eax, 60 (exit)
            0x31, 0xff, // xor edi, edi
            0x0f, 0x05, // syscall
        ]
    };
    let total = HEADERS + code.len() as u64 + msg.len() as u64;
    let mut elf = Vec::with_capacity(total as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for v in [0, BASE, BASE, total, total, 0x1000u64] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    elf.extend_from_slice(msg);
    elf
}

/// A ustar archive holding one executable file.
fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, field: &[u8]| h[at..at + field.len()].copy_from_slice(field);
    put(&mut header, 0, name.as_bytes());
    put(&mut header, 100, b"0000755\0");
    put(&mut header, 108, b"0000000\0");
    put(&mut header, 116, b"0000000\0");
    put(&mut header, 124, format!("{:011o}\0", data.len()).as_bytes());
    put(&mut header, 136, b"00000000000\0");
    put(&mut header, 156, b"0");
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    // The checksum is computed with its own field as spaces.
    put(&mut header, 148, b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_consistent() {
        let img = image().unwrap();
        let m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        for (i, (digest, bytes)) in img.blobs.iter().enumerate() {
            assert_eq!(Digest::of(Algorithm::Sha256, bytes), *digest);
            let listed = if i == 0 { &m["layers"][0] } else { &m["config"] };
            assert_eq!(listed["digest"], digest.to_string());
            assert_eq!(listed["size"], bytes.len());
        }
        assert_eq!(img.blobs[0].1.len() % 512, 0);
    }

    #[test]
    fn hello_binary_runs_and_greets() {
        let dir = std::env::temp_dir().join(format!("ociregistry-hello-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hello");
        std::fs::write(&path, elf_hello(GREETING.as_bytes())).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&path).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), GREETING);
    }

    #[test]
    fn tar_is_readable_by_tar() {
        let dir = std::env::temp_dir().join(format!("ociregistry-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("layer.tar");
        std::fs::write(&archive, tar_one_file("hello", b"abc")).unwrap();
        let out = std::process::Command::new("tar").arg("-tvf").arg(&archive).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("hello") && listing.contains("-rwxr-xr-x"), "{listing}");
    }
}
