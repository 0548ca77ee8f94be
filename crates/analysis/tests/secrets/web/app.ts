const apiKey = "k3y_live_51H8abcXYZ";
export const config = { password: 'Tr0ub4dor&3', };
const headers = { Authorization: "Bearer 7f3kq9xv2m1c8z" };
const jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
const session = { "api-key": "ak-9d8s7f6g5h" };
private readonly clientSecret: string = "Zq8-Lm4-Xr2";

const password = process.env.DB_PASSWORD;
const token = req.headers.authorization;
interface Props { token: string; password?: string }
const { password } = body;
if (!password) throw new Error("password: required");
const apiKey2 = process.env["API_KEY"] ?? "";
const clientSecret = `cs-${env}`;
const id = "0f8fad5b-d9cb-469f-a165-70867728950e";
login({ username, password: pwd });
  password: string;
const auth = { type: "bearer", token };
