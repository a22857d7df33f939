Console.WriteLine("proxy");
