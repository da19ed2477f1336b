fn main() {}
mod devices;
