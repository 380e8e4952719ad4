fn main() {
    println!("pacmesh");
}
