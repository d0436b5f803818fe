//! TEST FIXTURE — never serve it. A well-formed component whose world is
//! not `wasmux:plugin/handler`: the hot-swap tests check that wasmux refuses
//! it and keeps serving the version loaded before.

wit_bindgen::generate!({
    inline: "
        package test:wrong-world;

        world greeter {
            export greet: func(name: string) -> string;
        }
    ",
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
