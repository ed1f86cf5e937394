//! Boot configuration from the OpenStack config drive. Filled in by the image work.
