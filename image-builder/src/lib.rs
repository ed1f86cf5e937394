//! akanda-image: builds the Akanda Service Instance image from diskimage-builder-style
//! elements without loop devices or mounts, boots it under QEMU to verify it, and uploads it
//! to Glance.
//!
//! Modules: `elements` (discovery, dependency order, package lists: pure), `build` (the
//! pipeline and its cache), `disk` (GPT + ext4 + ESP + GRUB into a plain file), `tools` (host
//! tools and subprocesses), `progress` (indicatif), `verify` (QEMU + network namespaces),
//! `configdrive` (a Nova-style config drive), `upload` (Keystone v3 + Glance v2).

pub mod build;
pub mod configdrive;
pub mod disk;
pub mod elements;
pub mod progress;
pub mod tools;
pub mod upload;
pub mod verify;
