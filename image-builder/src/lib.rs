//! akanda-image: builds the Akanda Service Instance image from diskimage-builder-style
//! elements without loop devices or mounts, boots it under QEMU to verify it, and uploads it
//! to Glance.
//!
//! Modules:
//! - `build`: the pipeline, a list of named steps over one context, which calls `locate`
//!   (elements and agent, found from the executable), `base` (the cached `root.d` tree),
//!   `phases` (element scripts), `tree` (copy, tidy, manifest) and `disk` (GPT + ext4 + ESP +
//!   GRUB into a plain file);
//! - `elements`: discovery, dependency order, package lists (pure);
//! - `tools`: host tools, and the one runner every subprocess goes through;
//! - `progress` (indicatif), `verify` (QEMU + network namespaces), `configdrive` (a
//!   Nova-style config drive), `upload` (Keystone v3 + Glance v2).
//!
//! The library has no CLI types in its build API: `main.rs` maps clap's arguments to
//! [`build::BuildOptions`].

pub(crate) mod base;
pub mod build;
pub(crate) mod configdrive;
pub(crate) mod disk;
pub mod elements;
pub mod locate;
pub(crate) mod phases;
pub(crate) mod progress;
pub(crate) mod tools;
pub(crate) mod tree;
pub mod upload;
pub mod verify;
